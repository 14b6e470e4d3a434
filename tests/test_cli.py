"""Smoke runs of the console scripts on generated data, and their answers to bad input."""

import json

import cv2
import numpy as np
import pytest

from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.train import main as train_main
from tests.conftest import invoke, moving_still, one_line_error, write_video

FAST = ["--steps", "2", "--batch", "2", "--crop", "32", "--checkpoint-every", "1", "--threads", "1",
        "--no-builtin-stills"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A RefTok and a twin trained for two steps on a generated video plus gray and RGBA stills."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    write_video(data / "clip.avi", moving_still("coffee", 12, 48))
    gray = moving_still("camera", 1, 64)[0, :, :, 0]
    cv2.imwrite(str(data / "gray.png"), gray)
    rgba = np.dstack([moving_still("chelsea", 1, 64)[0], np.full((64, 64), 200, np.uint8)])
    cv2.imwrite(str(data / "rgba.png"), rgba)
    runs = {}
    for name, extra in (("reftok", []), ("twin", ["--no-reference"])):
        result = invoke(train_main, [data, "--out", root / name, *FAST, *extra])
        assert result.exit_code == 0, result.output
        runs[name] = root / name
    return runs


def test_train_writes_checkpoint_and_resumes(trained):
    config = json.loads((trained["reftok"] / "checkpoint" / "config.json").read_text())
    assert config["training"]["step"] == 2
    assert set(config["training"]["data"]) >= {"clip.avi", "gray.png", "rgba.png"}
    result = invoke(train_main, [trained["reftok"].parent / "data", "--out", trained["reftok"], "--resume",
                                 *[a if a != "2" else "3" for a in FAST]])
    assert result.exit_code == 0, result.output
    config = json.loads((trained["reftok"] / "checkpoint" / "config.json").read_text())
    assert config["training"]["step"] == 3


def test_eval_json_reports_both_models(trained, video_file):
    result = invoke(eval_main, [video_file, "--checkpoint", trained["reftok"] / "checkpoint",
                                "--twin", trained["twin"] / "checkpoint", "--size", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    clip = report["clips"][0]
    assert clip["gops"] == 2 and clip["frames_scored"] == 16
    assert 0 < clip["reftok"]["psnr"] < 100 and 0 < clip["twin"]["ssim"] <= 1
    assert clip["bpp_tokens"] == pytest.approx(2 * 8 * 8 * np.log2(1000) / (8 * 64 * 64))
    assert clip["bpp_with_reference_png"] > clip["bpp_tokens"]
    assert "psnr_gain_db" in report["mean"]
    # The zero-token baseline: every block frame shown as its reference.
    from reftok_deploy.base.gop_plan import plan_gops
    from reftok_deploy.quality.metrics import psnr
    from reftok_deploy.base.video import read_video

    gops = plan_gops(read_video(video_file, size=64), 8)
    by_hand = np.mean([psnr(frame, g.reference) for g in gops for frame in g.block])
    assert clip["copy_reference"]["psnr"] == pytest.approx(by_hand)
    assert report["mean"]["copy_reference"]["psnr"] == pytest.approx(by_hand)


def test_eval_suite_reports_every_case_and_baseline(trained):
    from reftok_deploy.quality import x264
    from reftok_deploy.quality.suite import CASES

    result = invoke(eval_main, ["--suite", "--size", "64", "--checkpoint", trained["reftok"] / "checkpoint",
                                "--twin", trained["twin"] / "checkpoint", "--json"])
    assert result.exit_code == 0, result.output
    clips = {c["clip"]: c for c in json.loads(result.stdout)["clips"]}
    assert set(clips) == {f"suite:{case}" for case in CASES}
    for clip in clips.values():
        assert {"reftok", "twin", "copy_reference", "temporal_change", "code_usage"} <= set(clip)
        assert clip["code_usage"]["distinct"] >= 1 and clip["temporal_change"]["original"] >= 0
        assert ("x264" in clip) == x264.available()
    assert clips["suite:static"]["copy_reference"]["psnr"] == 100.0  # copying is exact there
    assert clips["suite:cut"]["cuts"] == 1 and clips["suite:pan"]["cuts"] == 0
    if x264.available():
        pan = clips["suite:pan"]["x264"]
        # At 64x64 even QP 51 may overshoot the tiny token budget: then that is said, never hidden.
        assert pan["over_target"] or pan["bits"] <= pan["target_bits"] * 1.001
        assert 10 < pan["psnr"] < 100


def test_eval_grid_png(trained, video_file, tmp_path):
    result = invoke(eval_main, [video_file, "--size", "64", "--checkpoint", trained["reftok"] / "checkpoint",
                                "--twin", trained["twin"] / "checkpoint", "--no-x264", "--grid", tmp_path / "grids"])
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(tmp_path / "grids" / "astronaut.png"))
    assert grid.shape == (4 * 64, 3 * 64, 3)  # original | RefTok | twin | copy; frames 1, 4, 8


def test_eval_table(trained, video_file):
    result = invoke(eval_main, [video_file, "--checkpoint", trained["reftok"] / "checkpoint", "--no-twin",
                                "--size", "64"])
    assert result.exit_code == 0
    assert "astronaut.avi" in result.stdout and "mean" in result.stdout
    head = result.stdout.splitlines()[0].split()
    assert head[-6:] == ["bmw", "x264", "step", "codes", "bits", "beats"] or head[-5:] == ["bmw", "step", "codes", "bits", "beats"]


def test_eval_bad_inputs(tmp_path, trained, video_file):
    ck = ["--checkpoint", trained["reftok"] / "checkpoint", "--no-twin", "--size", "64"]
    one_line_error(invoke(eval_main, [video_file, "--checkpoint", tmp_path / "missing"]), "checkpoint not found")
    one_line_error(invoke(eval_main, [tmp_path / "none.avi", *ck]), "video not found")
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(b"RIFF" + bytes(range(256)) * 20)
    one_line_error(invoke(eval_main, [corrupt, *ck]), "corrupt.avi")
    # A clip shorter than a block is scored like reftok-run treats it (a padded tail); one frame is no GOP.
    single = write_video(tmp_path / "single.avi", moving_still("astronaut", 1, 64))
    one_line_error(invoke(eval_main, [single, *ck]), "fewer than one reference + one frame")
    other_version = tmp_path / "v99"
    other_version.mkdir()
    config = json.loads((trained["reftok"] / "checkpoint" / "config.json").read_text())
    config["model"]["model_version"] = 99
    (other_version / "config.json").write_text(json.dumps(config))
    one_line_error(invoke(eval_main, [video_file, "--checkpoint", other_version]), "model version 99")


def test_train_bad_inputs(tmp_path):
    one_line_error(invoke(train_main, [tmp_path / "nothing", "--out", tmp_path / "run", *FAST]), "not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(invoke(train_main, [empty, "--out", tmp_path / "run", *FAST]), "no training data")
    short = tmp_path / "short"
    short.mkdir()
    write_video(short / "s.avi", moving_still("astronaut", 4, 64))
    one_line_error(invoke(train_main, [short, "--out", tmp_path / "run", *FAST]), "shorter than one reference")
    one_line_error(invoke(train_main, [short, "--out", tmp_path / "run", "--crop", "36"]), "multiple of 8")
    one_line_error(invoke(train_main, [short, "--out", tmp_path / "run", "--device", "bogus"]), "use cpu, cuda or cuda:N")


def test_train_time_budget_stops_with_a_checkpoint_at_the_low_rate(trained, tmp_path):
    from reftok_deploy.model.training import Recipe, learning_rate

    recipe = Recipe(steps=1000, warmup=10, lr=1e-3)
    assert learning_rate(recipe, 20, time_fraction=1.0) == pytest.approx(1e-5)
    assert learning_rate(recipe, 20, time_fraction=0.0) > 9e-4
    assert learning_rate(recipe, 999, time_fraction=0.1) < 2e-5  # steps further along than time
    data = trained["reftok"].parent / "data"
    result = invoke(train_main, [data, "--out", tmp_path / "budget", *FAST, "--steps", "100000",
                                 "--max-minutes", "0.002"])
    assert result.exit_code == 0, result.output
    training = json.loads((tmp_path / "budget" / "checkpoint" / "config.json").read_text())["training"]
    assert 1 <= training["step"] < 100000 and training["stopped_by"] == "max_minutes"
    assert training["recipe"]["max_minutes"] == 0.002
    log = [json.loads(line) for line in (tmp_path / "budget" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == training["step"] and log[-1]["lr"] < 1e-4


WORKER_BATCHES = """
import json, sys, torch
from reftok_deploy.model.data import TrainingSampler, batch_stream
sampler = TrainingSampler([sys.argv[1]], [], block_frames=8, crop=32, seed=1, use_builtin_stills=False)
stream = batch_stream(sampler, 3, workers=2, seed=1)
reference, frames, flow = next(stream)
again = next(stream)
stream.close()
print(json.dumps({"shapes": [list(t.shape) for t in (reference, frames, flow)], "min": frames.min().item(),
                  "max": frames.max().item(), "differ": not torch.equal(again[1], frames)}))
"""


def test_batches_from_worker_processes(tmp_path):
    """In a process of its own, as reftok-train runs: the suite's process has run OpenVINO and ONNX Runtime
    by then (on AMX CPUs with AMX state enabled), and the DataLoader's SIGCHLD handler there crashed the
    whole test run on fresh clones of a Xeon with AMX, once the workers exited."""
    import subprocess
    import sys

    video = write_video(tmp_path / "clip.avi", moving_still("rocket", 12, 48))
    done = subprocess.run([sys.executable, "-c", WORKER_BATCHES, str(video)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["shapes"] == [[3, 3, 32, 32], [3, 3, 8, 32, 32], [3, 2, 8, 32, 32]]
    assert result["min"] >= -1 and result["max"] <= 1
    assert result["differ"]  # the workers draw different samples
    assert "killed by signal" not in done.stderr and "terminate called" not in done.stderr, done.stderr[-3000:]


def test_version1_checkpoint_is_refused_with_what_to_do(tiny_checkpoint, video_file, tmp_path):
    import shutil

    old = tmp_path / "v1"
    shutil.copytree(tiny_checkpoint, old)
    config = json.loads((old / "config.json").read_text())
    config["model"]["model_version"] = 1
    (old / "config.json").write_text(json.dumps(config))
    one_line_error(invoke(eval_main, [video_file, "--checkpoint", old, "--no-twin"]), "--init-from")


def test_train_log_reports_code_usage_and_motion_error(trained):
    lines = [json.loads(line) for line in (trained["reftok"] / "train_log.jsonl").read_text().splitlines()]
    assert lines and all(k in lines[-1] for k in ("codes", "entropy_bits", "motion_epe_px", "psnr_running"))
    assert lines[-1]["codes"] >= 1 and lines[-1]["motion_epe_px"] is not None
    twin = [json.loads(line) for line in (trained["twin"] / "train_log.jsonl").read_text().splitlines()]
    assert twin[-1]["motion_epe_px"] is None


def test_eval_demo_needs_no_files(trained):
    result = invoke(eval_main, ["--demo", "--size", "32", "--checkpoint", trained["reftok"] / "checkpoint",
                                "--twin", trained["twin"] / "checkpoint", "--json", "--max-gops", "1"])
    assert result.exit_code == 0, result.output
    names = [c["clip"] for c in json.loads(result.stdout)["clips"]]
    assert names == ["demo:astronaut", "demo:coffee", "demo:text"]


def test_eval_without_input_is_refused():
    one_line_error(invoke(eval_main, []), "--demo")


def test_training_is_reproducible_with_a_seed(tmp_path):
    from safetensors.torch import load_file

    data = tmp_path / "data"
    data.mkdir()
    write_video(data / "clip.avi", moving_still("rocket", 12, 48))
    weights = []
    for run in ("a", "b"):
        result = invoke(train_main, [data, "--out", tmp_path / run, *FAST, "--seed", "5"])
        assert result.exit_code == 0, result.output
        weights.append(load_file(str(tmp_path / run / "checkpoint" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])


def test_train_init_from_widens_the_codebook(trained, tmp_path):
    data = trained["reftok"].parent / "data"
    source = trained["reftok"] / "checkpoint"
    result = invoke(train_main, [data, "--out", tmp_path / "wide", "--init-from", source, "--fsq-levels",
                                 "8,5,5,5,8,8", "--loss", "mse", *FAST])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "wide" / "checkpoint" / "config.json").read_text())
    assert config["model"]["fsq_levels"] == [8, 5, 5, 5, 8, 8]
    assert config["training"]["recipe"]["loss"] == "mse"
    source_sha = json.loads((source / "config.json").read_text())["weights_sha256"]
    assert config["training"]["recipe"]["init_from"] == f"checkpoint (model version 2) sha256:{source_sha}"
    result = invoke(train_main, [data, "--out", tmp_path / "wide", "--resume", "--fsq-levels", "8,5,5,5,8,8",
                                 *[a if a != "2" else "3" for a in FAST]])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "wide" / "checkpoint" / "config.json").read_text())
    assert config["training"]["step"] == 3
    assert config["training"]["recipe"]["init_from"] == f"checkpoint (model version 2) sha256:{source_sha}"


def test_train_bad_codebook_options(trained, tmp_path):
    data = trained["reftok"].parent / "data"
    out = ["--out", tmp_path / "run", *FAST]
    one_line_error(invoke(train_main, [data, *out, "--fsq-levels", "8,x"]), "comma-separated integers")
    one_line_error(invoke(train_main, [data, *out, "--fsq-levels", "64,64,64"]), "at most 65536")
    one_line_error(invoke(train_main, [data, *out, "--init-from", trained["twin"] / "checkpoint"]),
                   "differs from the model being trained in ['reference']")
    one_line_error(invoke(train_main, [data, *out, "--init-from", tmp_path / "missing"]), "checkpoint not found")
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_train_learning_rate_defaults_per_preset(trained, tmp_path):
    config = json.loads((trained["reftok"] / "checkpoint" / "config.json").read_text())
    assert config["training"]["recipe"]["lr"] == 1.5e-3
    result = invoke(train_main, [trained["reftok"].parent / "data", "--out", tmp_path / "small", "--preset", "small",
                                 *[a if a != "2" else "1" for a in FAST]])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "small" / "checkpoint" / "config.json").read_text())
    assert config["model"]["channels"] == [48, 96, 160]
    assert config["training"]["recipe"]["lr"] == 5e-4


def test_train_with_bf16_autocast_keeps_float32_weights(trained, tmp_path):
    from safetensors.torch import load_file

    data = trained["reftok"].parent / "data"
    weights = {}
    for name, extra in (("fp32", []), ("bf16", ["--autocast", "bf16"])):
        result = invoke(train_main, [data, "--out", tmp_path / name, *FAST, "--seed", "3", *extra])
        assert result.exit_code == 0, result.output
        weights[name] = load_file(str(tmp_path / name / "checkpoint" / "model.safetensors"))
        recipe = json.loads((tmp_path / name / "checkpoint" / "config.json").read_text())["training"]["recipe"]
        assert recipe["autocast"] == (extra[-1] if extra else None)
    assert all(w.dtype == weights["fp32"][k].dtype for k, w in weights["bf16"].items())
    assert all(w.isfinite().all() for w in weights["bf16"].values())
    # the same seed and data: only the forward precision differs, so some weights must too
    assert any(not (weights["bf16"][k] == weights["fp32"][k]).all() for k in weights["fp32"])
    one_line_error(invoke(train_main, [data, "--out", tmp_path / "bad", *FAST, "--autocast", "fp8"]), "fp8")
    # a resume keeps the run's numerics: the setting it started with, or a one-line refusal
    one_line_error(invoke(train_main, [data, "--out", tmp_path / "bf16", *FAST, "--seed", "3", "--resume",
                                       "--steps", "3"]), "--autocast bf16")
    result = invoke(train_main, [data, "--out", tmp_path / "bf16", *FAST, "--seed", "3", "--resume", "--steps", "3",
                                 "--autocast", "bf16"])
    assert result.exit_code == 0, result.output


def test_freeze_decoder_moves_only_the_encoder_side(trained, tmp_path):
    import torch
    from safetensors.torch import load_file

    data = trained["reftok"].parent / "data"
    source = trained["reftok"] / "checkpoint"
    result = invoke(train_main, [data, "--out", tmp_path / "frozen", *FAST, "--init-from", source, "--freeze-decoder",
                                 "--lr", "0.01"])
    assert result.exit_code == 0, result.output
    before = load_file(str(source / "model.safetensors"))
    after = load_file(str(tmp_path / "frozen" / "checkpoint" / "model.safetensors"))
    decoder_side = [k for k in before if k.startswith(("decoder.", "reference_encoder."))]
    encoder_side = [k for k in before if k.startswith(("encoder.", "motion_features.", "squeeze4.", "squeeze8."))]
    assert decoder_side and encoder_side and len(decoder_side) + len(encoder_side) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in decoder_side)
    assert sum(not torch.equal(before[k], after[k]) for k in encoder_side) > len(encoder_side) // 2
    recipe = json.loads((tmp_path / "frozen" / "checkpoint" / "config.json").read_text())["training"]["recipe"]
    assert recipe["freeze_decoder"] is True
    # a frozen fresh decoder would never learn; a resume keeps the run's setting
    one_line_error(invoke(train_main, [data, "--out", tmp_path / "fresh", *FAST, "--freeze-decoder"]), "--init-from")
    one_line_error(invoke(train_main, [data, "--out", tmp_path / "frozen", *FAST, "--resume", "--steps", "3"]),
                   "--freeze-decoder")
    result = invoke(train_main, [data, "--out", tmp_path / "frozen", *FAST, "--resume", "--steps", "3",
                                 "--freeze-decoder"])
    assert result.exit_code == 0, result.output
    resumed = load_file(str(tmp_path / "frozen" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(before[k], resumed[k]) for k in decoder_side)
