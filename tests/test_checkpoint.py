import json

import pytest
import torch
from safetensors.torch import save_file

from reftok_deploy.model.checkpoint import CONFIG, WEIGHTS, default_checkpoint, load_checkpoint, save_checkpoint
from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.reftok import RefTok, RefTokConfig

SMALL = RefTokConfig(channels=(8, 8, 8), res_blocks=1)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = RefTok(SMALL)
    folder = save_checkpoint(model, tmp_path / "ck", training={"steps": 1}, metrics={"psnr": 1.0})
    return model, folder


def test_round_trip_is_exact(saved):
    model, folder = saved
    loaded, config = load_checkpoint(folder)
    assert loaded.cfg == model.cfg and config["training"] == {"steps": 1}
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
    assert not loaded.training


def _rewrite_config(folder, **changes):
    config = json.loads((folder / CONFIG).read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config[section][field] = value
        else:
            config[section] = value
    (folder / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / WEIGHTS).unlink(), "no model.safetensors"),
    (lambda f: (f / CONFIG).unlink(), "no config.json"),
    (lambda f: (f / CONFIG).write_text("{not json"), "not valid JSON"),
    (lambda f: (f / CONFIG).write_text("[]"), "not a RefTok checkpoint"),
    (lambda f: _rewrite_config(f, model__model_version=99), "model version 99"),
    (lambda f: _rewrite_config(f, model__channels=[8, 8]), "invalid model config"),
    (lambda f: (f / WEIGHTS).write_bytes((f / WEIGHTS).read_bytes()[:100]), "does not match the sha256"),
])
def test_damaged_checkpoints_fail_with_one_clear_line(saved, damage, message):
    _, folder = saved
    damage(folder)
    with pytest.raises(ReftokError, match=message) as info:
        load_checkpoint(folder)
    assert "\n" not in str(info.value)


def test_truncated_weights_without_hash_are_refused(saved):
    _, folder = saved
    _rewrite_config(folder, weights_sha256=None)
    (folder / WEIGHTS).write_bytes((folder / WEIGHTS).read_bytes()[:100])
    with pytest.raises(ReftokError, match="cannot read"):
        load_checkpoint(folder)


def test_weights_of_another_shape_are_refused(saved):
    _, folder = saved
    _rewrite_config(folder, weights_sha256=None)
    other = RefTok(RefTokConfig(channels=(8, 8, 16), res_blocks=1)).state_dict()
    save_file(other, str(folder / WEIGHTS))
    with pytest.raises(ReftokError, match="expected"):
        load_checkpoint(folder)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(ReftokError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReftokError, match="must be a folder"):
        load_checkpoint(tmp_path / "file")


@pytest.mark.parametrize("twin", [False, True])
def test_shipped_checkpoints_load(twin):
    model, config = load_checkpoint(default_checkpoint(twin=twin))
    assert model.cfg.reference is not twin
    assert_finished(config["training"])


def assert_finished(training: dict) -> None:
    """A finished run (all its steps, or stopped by its time budget), or an average of finished runs
    or of averages (stage 8 averages stage 7, itself an average, with two runs)."""
    if "average_of" not in training:
        assert training["step"] == training["recipe"]["steps"] or training.get("stopped_by") == "max_minutes"
        return
    runs = training["average_of"]
    assert runs and len(training.get("weights", [1.0] * len(runs))) == len(runs)
    for run in runs:
        assert_finished(run)


def test_shipped_model_keeps_static_content_near_the_reference():
    """The exact reference path of the shipped model: a still scene decodes to the reference or
    within the issue's 45 dB of it (the checkpoint with the group context moves a fifth of a still
    scene's pixels by 0.1-1 px: 61 dB at 256x256; a wider motion dead zone costs the moving cases
    up to 1.2 dB on average), a noisy still scene no worse than copying the reference."""
    from reftok_deploy.quality.evaluate import evaluate_frames
    from reftok_deploy.quality.suite import suite_clips

    model, _ = load_checkpoint(default_checkpoint())
    # At the suite's own size, where the acceptance is measured: at 128x128 the noisy case is 0.16 dB
    # below copying (motion the encoder reads into the noise, spread over fewer pixels).
    clips = suite_clips(256, cases=("static", "static_noise"))
    static = evaluate_frames("static", clips["suite:static"], model, None)
    assert static["reftok"]["worst_frame_psnr"] >= 45.0
    noisy = evaluate_frames("static_noise", clips["suite:static_noise"], model, None)
    assert noisy["reftok"]["psnr"] >= noisy["copy_reference"]["psnr"] - 0.1
