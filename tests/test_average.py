"""Weight averaging of checkpoints (how the shipped RefTok of stages 7 and 8 was made)."""

from __future__ import annotations

import json

import pytest
import torch

from reftok_deploy.cli.average_checkpoints import main
from reftok_deploy.model.average import average_checkpoints
from reftok_deploy.model.checkpoint import load_checkpoint, save_checkpoint
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.reftok import PRESETS, RefTok


def _checkpoint(folder, seed: int, training: dict, reference: bool = True):
    torch.manual_seed(seed)
    cfg = PRESETS["tiny"] if reference else PRESETS["tiny"].twin()
    model = RefTok(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return save_checkpoint(model, folder, training), model


def test_weighted_average_of_every_tensor_and_the_training_records(tmp_path):
    a, model_a = _checkpoint(tmp_path / "a", 1, {"name": "a"})
    b, model_b = _checkpoint(tmp_path / "b", 2, {"name": "b"})
    averaged, training = average_checkpoints([a, b], [1, 3], tmp_path / "avg")
    loaded, config = load_checkpoint(tmp_path / "avg")
    state_a, state_b, state = model_a.state_dict(), model_b.state_dict(), loaded.state_dict()
    assert set(state) == set(state_a) and all(t.is_floating_point() for t in state.values())
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, 0.25 * state_a[name] + 0.75 * state_b[name], rtol=0, atol=1e-6)
        assert torch.equal(tensor, averaged.state_dict()[name])
    assert config["training"] == training == {"average_of": [{"name": "a"}, {"name": "b"}], "weights": [0.25, 0.75]}
    assert config["model"] == json.loads((a / "config.json").read_text())["model"]


def test_refuses_one_checkpoint_other_architectures_and_bad_weights(tmp_path):
    a, _ = _checkpoint(tmp_path / "a", 1, {})
    twin, _ = _checkpoint(tmp_path / "twin", 2, {}, reference=False)
    out = tmp_path / "out"
    with pytest.raises(ReftokError, match="at least two"):
        average_checkpoints([a], output=out)
    with pytest.raises(ReftokError, match="another architecture"):
        average_checkpoints([a, twin], output=out)
    with pytest.raises(ReftokError, match="2 weights for 3"):
        average_checkpoints([a, a, a], [1, 1], output=out)
    for weights in ([0, 0], [-1, 2], [float("nan"), 1], [float("inf"), 1]):
        with pytest.raises(ReftokError, match="finite and >= 0"):
            average_checkpoints([a, a], weights, output=out)
    assert not out.exists()
    before = (a / "model.safetensors").read_bytes()
    with pytest.raises(ReftokError, match="one of the inputs"):
        average_checkpoints([a, twin], output=a)
    assert (a / "model.safetensors").read_bytes() == before


def test_command_line(tmp_path, capsys):
    a, _ = _checkpoint(tmp_path / "a", 1, {})
    b, _ = _checkpoint(tmp_path / "b", 2, {})
    assert main([str(a), str(b), "-o", str(tmp_path / "avg")]) == 0
    assert load_checkpoint(tmp_path / "avg")[1]["training"]["weights"] == [0.5, 0.5]
    assert main([str(a), str(tmp_path / "missing"), "-o", str(tmp_path / "bad")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as stop:
        main([str(a), str(b), "--weights", "1,x", "-o", str(tmp_path / "bad")])
    assert stop.value.code == 2
