"""The block-motion warp baseline of reftok-eval: vectors, warp, motion bits, and its row in the report."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from reftok_deploy.quality.block_motion import block_flow, block_motion_warp, motion_bits, warp_by_blocks
from reftok_deploy.quality.metrics import psnr


def textured(size: int = 96) -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[100 : 100 + size, 150 : 150 + size])


def test_a_shifted_frame_gets_its_shift_back_and_the_warp_reproduces_it():
    ref = textured()
    frame = np.roll(ref, (2, -3), axis=(0, 1))  # content moved 3 px left, 2 px down
    vectors = block_flow(ref, frame)
    assert vectors.shape == (12, 12, 2)
    inner = vectors[2:-2, 2:-2].reshape(-1, 2)
    assert np.median(inner[:, 0]) == 3.0 and np.median(inner[:, 1]) == -2.0  # frame(p) = ref(p + v)
    assert set(np.unique(vectors * 2).tolist()) <= set(np.arange(-200, 201).tolist())  # half-pel grid
    warped = warp_by_blocks(ref, vectors)
    assert psnr(frame[16:-16, 16:-16], warped[16:-16, 16:-16]) > 40
    assert psnr(frame[16:-16, 16:-16], ref[16:-16, 16:-16]) < 25  # copying the reference does not


def test_a_static_block_is_the_reference_and_costs_nothing():
    ref = textured(64)
    warped, vectors = block_motion_warp(ref, np.stack([ref, ref, ref]))
    assert np.array_equal(warped, np.stack([ref] * 3)) and not vectors.any()
    assert motion_bits(vectors) == 0.0


def test_motion_bits_count_changes_not_repeats():
    still = np.zeros((8, 4, 4, 2), np.float32)
    steady = still.copy()
    steady[:, :2] = 1.5  # half the blocks move, the same way in every frame: only the first frame's vectors change
    varying = np.random.default_rng(0).integers(-8, 8, size=still.shape).astype(np.float32) / 2
    assert motion_bits(still) == 0.0
    assert 0 < motion_bits(steady) < motion_bits(varying)


def test_eval_reports_the_baseline_and_what_the_model_beats():
    from reftok_deploy.model.reftok import RefTok, RefTokConfig
    from reftok_deploy.model.checkpoint import default_checkpoint, load_checkpoint
    from reftok_deploy.quality.evaluate import evaluate_frames, summarize

    ref = textured(64)
    clip = np.stack([np.roll(ref, (0, k), axis=(0, 1)) for k in range(9)])  # a pan, 1 px per frame
    model = RefTok(RefTokConfig(channels=(8, 8, 8), res_blocks=0)).eval()
    result = evaluate_frames("pan", clip, model, None, x264=False)
    bmw = result["block_motion_warp"]
    assert bmw["psnr"] > result["copy_reference"]["psnr"] + 5 and bmw["bpp_motion"] > 0
    # an untrained model decodes the reference as it is (zero motion, zero residual): it beats nothing
    assert result["reftok"]["psnr"] == pytest.approx(result["copy_reference"]["psnr"], abs=0.01)
    assert result["beats"] == []
    trained, _ = load_checkpoint(default_checkpoint())
    shipped = evaluate_frames("pan", clip, trained, None, x264=False)
    assert shipped["reftok"]["psnr"] > shipped["copy_reference"]["psnr"] + 3
    assert shipped["beats"][0] == "copy_reference"
    summary = summarize([result])
    assert summary["psnr_over_block_motion_db"] == pytest.approx(result["reftok"]["psnr"] - bmw["psnr"])
    assert summary["block_motion_warp"]["bpp_motion"] == pytest.approx(bmw["bpp_motion"])
    assert "block_motion_warp" not in evaluate_frames("pan", clip, model, None, block_motion=False)


def test_coarser_blocks_cost_fewer_bits_and_the_table_says_their_size(video_file):
    from reftok_deploy.base.gop_plan import plan_gops
    from reftok_deploy.cli.eval import main as eval_main
    from reftok_deploy.quality.evaluate import block_motion_baseline
    from tests.conftest import invoke

    ref = textured(64)
    clip = np.stack([np.roll(ref, (k // 2, k), axis=(0, 1)) for k in range(9)])  # a diagonal pan
    gops = plan_gops(clip, 8, 1, None)
    original = np.concatenate([g.block for g in gops])
    fine, coarse = (block_motion_baseline(gops, original, 64 * 64, side) for side in (8, 16))
    assert (fine["block"], coarse["block"]) == (8, 16)
    assert 0 < coarse["bpp_motion"] < 0.5 * fine["bpp_motion"]
    out = invoke(eval_main, ["--video", video_file, "--size", "64", "--no-twin", "--no-x264", "--max-gops", "1",
                             "--block-motion-size", "16"])
    assert out.exit_code == 0 and "one half-pel vector per 16x16 block" in out.stdout, out.output
