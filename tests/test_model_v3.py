"""Version 3: the decoder reads the reference features aligned by each group's decoded motion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reftok_deploy.base.errors import ReftokError
from reftok_deploy.model.reftok import PRESETS, RefTok, RefTokConfig
from reftok_deploy.model.warping import warp_features, warp_reference
from reftok_deploy.model.warm_start import warm_start_state
from tests.conftest import invoke, moving_still


def version3_of(source: RefTok) -> RefTok:
    torch.manual_seed(3)
    target = RefTok(source.cfg.version3())
    target.load_state_dict(warm_start_state(source, target))
    return target.eval()


@pytest.fixture(scope="module")
def v3_model(tiny_model) -> RefTok:
    """A version-3 model whose aligned-feature weights are not zero, so they change what it decodes."""
    model = version3_of(tiny_model)
    with torch.no_grad():
        aligned = model.cfg.channels
        model.decoder.s2[0].weight[:, -aligned[1]:].normal_(std=0.05)
        model.decoder.s1[0].weight[:, -aligned[0]:].normal_(std=0.05)
    return model


def test_version3_config_is_version_3_and_its_twin_version_2():
    cfg = PRESETS["tiny"].version3()
    assert cfg.model_version == 3 and cfg.aligned_reference
    assert RefTokConfig.from_dict(cfg.to_dict()) == cfg
    twin = cfg.twin()
    assert twin.model_version == 2 and not twin.aligned_reference and not twin.reference
    with pytest.raises(ValueError, match="version 3"):
        RefTokConfig(aligned_reference=True)  # version 2 without being told
    old = PRESETS["tiny"].to_dict()
    del old["aligned_reference"]  # a config stored before version 3 existed
    assert RefTokConfig.from_dict(old) == PRESETS["tiny"]


def test_warm_start_from_version_2_decodes_exactly_as_its_source(tiny_model):
    target = version3_of(tiny_model)
    torch.manual_seed(4)
    reference = torch.rand(2, 3, 32, 48) * 2 - 1
    frames = (reference[:, :, None] + 0.1 * torch.randn(2, 3, 8, 32, 48)).clamp(-1, 1)
    with torch.no_grad():
        tokens = tiny_model.encode(reference, frames)
        assert torch.equal(target.encode(reference, frames), tokens)
        assert torch.equal(target.decode(reference, tokens), tiny_model.decode(reference, tokens))
    assert sum(p.numel() for p in target.parameters()) > sum(p.numel() for p in tiny_model.parameters())


def test_version3_does_not_warm_start_version_2(v3_model):
    with pytest.raises(ReftokError, match="model version 3"):
        warm_start_state(v3_model, RefTok(PRESETS["tiny"]))


def test_the_aligned_features_change_the_decode(tiny_model, v3_model):
    torch.manual_seed(5)
    reference = torch.rand(1, 3, 32, 32) * 2 - 1
    tokens = torch.randint(0, v3_model.fsq.codebook_size, (1, 2, 4, 4), dtype=torch.int32)
    with torch.no_grad():
        assert (v3_model.decode(reference, tokens) - tiny_model.decode(reference, tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("cell", [2, 4])
def test_warp_features_by_whole_cells_is_a_shift(cell):
    torch.manual_seed(6)
    features = torch.randn(1, 5, 12, 16)
    dx, dy = 2, 1  # cells; in pixels: cell * (dx, dy)
    motion = torch.tensor([cell * dx, cell * dy], dtype=torch.float32).view(1, 2, 1, 1).expand(1, 2, 12 * cell // 8,
                                                                                                16 * cell // 8)
    warped = warp_features(features, motion, cell, torch.float32)
    # Each position samples the features (dx, dy) cells further on; away from the borders that is a shift.
    assert torch.allclose(warped[..., :-dy, :-dx], features[..., dy:, dx:], atol=1e-5)
    assert torch.allclose(warp_features(features, torch.zeros_like(motion), cell, torch.float32), features, atol=1e-6)


def test_features_move_the_way_the_reference_does():
    torch.manual_seed(7)
    reference = torch.rand(1, 3, 16, 24) * 2 - 1
    motion = torch.randn(1, 2, 2, 3) * 3  # [N,2,H/8,W/8] px, smooth after the upsampling both warps do
    full = torch.nn.functional.interpolate(motion, scale_factor=8.0, mode="bilinear", align_corners=False)
    # cell 1: "features" at full resolution are the reference itself, warped by one frame's motion
    assert torch.allclose(warp_features(reference, motion, 1, torch.float32), warp_reference(reference, full), atol=1e-5)


def test_version3_exports_and_every_cpu_runtime_agrees_with_pytorch(tmp_path, v3_model):
    import onnx

    from reftok_deploy.base.graph_regions import sampling_head_convs
    from reftok_deploy.base.manifest import open_export
    from reftok_deploy.export.job import ExportOptions, run_export
    from reftok_deploy.model.checkpoint import save_checkpoint
    from reftok_deploy.runtimes.codec import FrameCodec
    from reftok_deploy.runtimes.factory import make_runner

    checkpoint = save_checkpoint(v3_model, tmp_path / "v3")
    manifest = run_export(checkpoint, tmp_path / "export", ExportOptions(dynamo=False, tensorrt="skip"))
    assert manifest["model"]["model_version"] == 3 and manifest["model"]["aligned_reference"] is True
    assert manifest["preflight"] and all(report["ok"] for report in manifest["preflight"].values())
    export = open_export(tmp_path / "export")
    decoder = onnx.load(str(export.artifact("decoder", "fp32")))
    # three warps (the reference per frame, its features at 1/4 and 1/2); INT8 keeps only the motion head in float
    assert [n.op_type for n in decoder.graph.node].count("GridSample") == 3
    assert len(sampling_head_convs(decoder)) == 1
    clip = moving_still("astronaut", 9, 48)
    with make_runner("torch", None, checkpoint) as torch_runner:
        expected_tokens = FrameCodec(torch_runner).encode(clip[0], clip[1:])
        expected_frames = FrameCodec(torch_runner).decode(clip[0], expected_tokens)
    for spec in ("onnxruntime:fp32", "openvino:fp32"):
        with make_runner(spec, export, checkpoint) as runner:
            codec = FrameCodec(runner)
            assert (codec.encode(clip[0], clip[1:]) == expected_tokens).mean() >= 0.999, spec
            frames = codec.decode(clip[0], expected_tokens)
            assert np.abs(frames.astype(int) - expected_frames).max() <= 1, spec


def test_train_model_version_3_records_code_usage_per_group(tmp_path, video_file):
    from reftok_deploy.cli.train import main as train
    from reftok_deploy.model.checkpoint import load_checkpoint

    run = tmp_path / "run"
    result = invoke(train, [video_file, "-o", run, "--model-version", "3", "--steps", 2, "--batch", 1, "--crop", 32,
                            "--checkpoint-every", 1, "--no-builtin-stills", "--threads", 1])
    assert result.exit_code == 0, result.output
    model, config = load_checkpoint(run / "checkpoint")
    assert model.cfg.model_version == 3 and model.cfg.aligned_reference
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    marks = [line for line in lines if line.get("checkpoint")]
    assert [m["step"] for m in marks] == [1, 2]
    groups = model.cfg.block_frames // model.cfg.temporal_factor
    for mark in marks:
        usage = mark["codes_per_group"]
        assert len(usage) == groups
        # one 32x32 crop gives 4x4 tokens per group: between 1 and 16 distinct ids, entropy at most log2(16)
        assert all(1 <= g["distinct"] <= 16 and 0.0 <= g["entropy_bits"] <= 4.0 for g in usage), usage
    assert config["training"]["codes_per_group_since_last_checkpoint"] == marks[-1]["codes_per_group"]
