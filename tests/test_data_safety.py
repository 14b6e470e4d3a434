"""Users' files are safe: an output is never an input, a full disk is an error, every path is checked before
any work, and a failed command leaves nothing behind (issue: never lose a user's data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.cli.train import main as train_main
from tests.conftest import one_error_line, tree_listing

COMMANDS = {"run": run_main, "decode": decode_main, "train": train_main, "export": export_main, "eval": eval_main}
FAST_TRAIN = ["--steps", "1", "--batch", "1", "--crop", "32", "--no-builtin-stills", "--threads", "1"]
UNWRITABLE = "/proc/reftok-cannot-write"


@pytest.fixture
def world(users_files):
    return users_files


def invoke(command: str, args: list, files: dict, out: Path):
    argv = [str(a).format(out=out, **{k: v for k, v in files.items()}) for a in args]
    return CliRunner().invoke(COMMANDS[command], argv)


SAME_FILE = [
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{video}"], "is the video"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--tokens", "{video}"], "is the video"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{root}/hardlink.avi"],
     "is the video"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{root}/symlink.avi"],
     "is the video"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/o.avi", "--tokens",
             "{out}/o.avi"], "are the same file"),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{ck}/model.safetensors"],
     "is the checkpoint"),
    ("decode", ["{stream}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{stream}"], "is the token stream"),
    ("decode", ["{stream}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{root}/stream-link.mp4"],
     "is the token stream"),
    ("train", ["{root}/data", "-o", "{run}", "--init-from", "{run}/checkpoint", *FAST_TRAIN],
     "would overwrite the --init-from checkpoint"),
]


@pytest.mark.parametrize("command,args,fragment", SAME_FILE, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(SAME_FILE)])
def test_an_output_that_is_an_input_is_refused_and_nothing_changes(world, tmp_path, command, args, fragment):
    before = tree_listing(world["root"])
    started = time.perf_counter()
    one_error_line(invoke(command, args, world, tmp_path), fragment)
    assert time.perf_counter() - started < 5
    assert tree_listing(world["root"]) == before
    assert not list(tmp_path.iterdir())


def test_grid_pictures_of_clips_with_one_name_get_their_own_files():
    from reftok_deploy.quality.scoring import grid_names

    assert grid_names(["a/clip.avi", "b/clip.avi", "suite:pan", "c/other.mp4"]) == \
        ["clip-1", "clip-2", "suite-pan", "other"]


def test_a_path_through_a_folder_that_does_not_exist_cannot_reach_an_existing_file(world, tmp_path):
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.paths import OutputPlan

    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.mp4").write_bytes(b"the user's video")
    with pytest.raises(ReftokError, match="the command failed"):
        with OutputPlan() as plan:
            plan.file(tmp_path / "new" / ".." / "existing" / "keep.mp4", "--output")
            raise ReftokError("the command failed")
    assert (tmp_path / "existing" / "keep.mp4").read_bytes() == b"the user's video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_a_refused_declaration_removes_the_folders_made_for_earlier_outputs(world, tmp_path):
    one_error_line(invoke("run", ["--demo", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/a/o.mp4",
                                  "--tokens", "{out}/a/o.mp4"], world, tmp_path), "are the same file")
    assert not list(tmp_path.iterdir())


def test_published_outputs_survive_an_interrupt_while_the_source_closes(world, tmp_path, monkeypatch):
    from reftok_deploy.runtimes.capture import ArraySource

    def interrupted_close(self, *exc):
        raise KeyboardInterrupt

    monkeypatch.setattr(ArraySource, "__exit__", interrupted_close)
    result = invoke("run", ["--demo", "--checkpoint", "{ck}", "--backend", "torch", "--max-frames", "18", "-o",
                            "{out}/new/o.mp4", "--tokens", "{out}/new/t.rtok"], world, tmp_path)
    assert result.exit_code == 130, result.stderr
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["o.mp4", "t.rtok"]


def test_an_export_folder_holding_a_folder_named_like_an_artefact_is_refused(world, tmp_path):
    (tmp_path / "e" / "encoder.fp32.onnx").mkdir(parents=True)
    one_error_line(invoke("export", ["--checkpoint", "{ck}", "-o", "{out}/e", "--no-validate"], world, tmp_path),
                   "is a folder where this command writes a file")
    assert tree_listing(tmp_path) == {"e": (-1, b""), "e/encoder.fp32.onnx": (-1, b"")}


UNWRITABLE_CASES = [
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "auto", "--tokens", UNWRITABLE + "/t.rtok"]),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "auto", "-o", UNWRITABLE + "/o.mp4"]),
    ("decode", ["{stream}", "--checkpoint", "{ck}", "--backend", "auto", "-o", UNWRITABLE + "/o.mp4"]),
    ("train", ["{root}/data", "-o", UNWRITABLE + "/run", *FAST_TRAIN]),
    ("export", ["--checkpoint", "{ck}", "-o", UNWRITABLE + "/e"]),
    ("eval", ["--video", "{video}", "--checkpoint", "{ck}", "--no-twin", "--grid", UNWRITABLE + "/g"]),
]


@pytest.mark.parametrize("command,args", UNWRITABLE_CASES, ids=[c for c, _ in UNWRITABLE_CASES])
def test_an_unwritable_output_fails_before_any_work(world, tmp_path, command, args):
    started = time.perf_counter()
    one_error_line(invoke(command, args, world, tmp_path), "not writable")
    assert time.perf_counter() - started < 5  # --backend auto would measure backends for a minute first


LEAVES_NOTHING = [
    ("train", ["{root}/none", "-o", "{out}/run", *FAST_TRAIN], "not found"),
    ("train", ["{root}/data", "-o", "{out}/a/b/run", "--init-from", "{root}/none", *FAST_TRAIN], "checkpoint not found"),
    ("train", ["{root}/data", "-o", "{out}/run", "--init-from", "{stream}", *FAST_TRAIN], ""),
    ("export", ["--checkpoint", "{root}/none", "-o", "{out}/e"], "checkpoint not found"),
    ("export", ["--checkpoint", "{root}/data", "-o", "{out}/x/e"], ""),
    ("eval", ["--video", "{root}/none.avi", "--checkpoint", "{ck}", "--no-twin", "--grid", "{out}/g/h"], "not found"),
    ("run", ["--video", "{stream}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/a/b/c.mp4", "--tokens",
             "{out}/t/t.rtok"], "cannot open"),
    ("decode", ["{root}/in.avi", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/a/b/c.mp4"], "not a .rtok"),
]


@pytest.mark.parametrize("command,args,fragment", LEAVES_NOTHING,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(LEAVES_NOTHING)])
def test_a_failed_command_leaves_nothing_behind(world, tmp_path, command, args, fragment):
    before = tree_listing(world["root"])
    one_error_line(invoke(command, args, world, tmp_path), fragment)
    assert not list(tmp_path.iterdir()), list(tmp_path.rglob("*"))
    assert tree_listing(world["root"]) == before


def test_missing_parent_folders_are_created_for_every_output(world, tmp_path):
    result = invoke("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/a/b/c.mp4",
                            "--tokens", "{out}/x/y/t.rtok"], world, tmp_path)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "a/b/c.mp4").stat().st_size > 0 and (tmp_path / "x/y/t.rtok").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["c.mp4", "t.rtok"]  # no temp files


def test_a_diverging_training_stops_with_one_line_and_saves_nothing(world, tmp_path, monkeypatch):
    import torch.nn.functional as F

    from reftok_deploy.model import training as train

    monkeypatch.setitem(train.LOSSES, "l1", lambda a, b: F.l1_loss(a, b) * float("nan"))
    one_error_line(invoke("train", ["{root}/data", "-o", "{out}/run", *FAST_TRAIN], world, tmp_path),
                   "training diverged: the loss is nan at step 1")
    assert not list(tmp_path.iterdir())


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(world, tmp_path):
    started = time.perf_counter()
    one_error_line(invoke("train", ["{root}/data", "-o", "{out}/run", "--batch", "4000", "--crop", "1024"], world,
                          tmp_path), "lower --batch or --crop")
    one_error_line(invoke("eval", ["--video", "{video}", "--batch", "4000", "--size", "4096"], world, tmp_path),
                   "lower --batch or --size")
    assert time.perf_counter() - started < 5 and not list(tmp_path.iterdir())


def test_refining_tokens_counts_the_decoder_run_backwards_in_the_memory_check():
    from reftok_deploy.base.errors import ReftokError
    from reftok_deploy.base.machine import physical_memory_bytes
    from reftok_deploy.quality.scoring import EvalJob, check_eval_job

    size = 1024  # a batch at ~1.4x the machine's memory with --refine-steps, ~0.7x without
    batch = max(1, physical_memory_bytes() // (size * size * 5_000))
    job = dict(checkpoint="unused", twin=None, suite=True, size=size, batch=batch, with_x264=False)
    check_eval_job(EvalJob(**job), note=print)
    with pytest.raises(ReftokError, match=f"--batch {batch} at --size {size} with --refine-steps needs about"):
        check_eval_job(EvalJob(**job, refine_steps=1), note=print)


# Each case runs in one child process whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes every
# write past the limit (argv[2], bytes) fail with EFBIG, as a full disk fails with ENOSPC: OpenCV's writer, safetensors,
# the ONNX writer and the PNG writer all meet a real failing write().
FULL_DISK_SCRIPT = """
import json, resource, signal, sys
from click.testing import CliRunner
cases = json.loads(sys.argv[1])
modules = {name: __import__(f"reftok_deploy.cli.{name}", fromlist=["main"]) for name in {c[0] for c in cases}}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
results = [CliRunner().invoke(modules[name].main, argv) for name, argv in cases]
print(json.dumps([[r.exit_code, r.stderr, repr(r.exception)] for r in results]))
"""
FULL_DISK = [
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/run/o.mp4"]),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/run-avi/o.avi"]),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--tokens", "{out}/tokens/t.rtok"]),
    ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--tokens", "{out}/both/t.rtok",
             "-o", "{out}/both/o.avi"]),
    ("decode", ["{stream}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/decode/o.mp4"]),
    ("train", ["{root}/data", "-o", "{out}/train/run", *FAST_TRAIN]),
    ("export", ["--checkpoint", "{ck}", "-o", "{out}/export/e", "--no-validate", "--exporter", "torchscript"]),
    ("eval", ["--video", "{video}", "--checkpoint", "{ck}", "--no-twin", "--no-x264", "--grid", "{out}/eval/g"]),
]


def test_a_full_disk_is_one_error_line_and_leaves_nothing(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cases = [[name, [str(a).format(out=out, **world) for a in args]] for name, args in FULL_DISK]
    limit = 8192  # bytes: every output above is larger; the writability probes are empty files
    child = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, json.dumps(cases), str(limit)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    for (name, argv), (code, stderr, exception) in zip(cases, json.loads(child.stdout.splitlines()[-1])):
        # progress lines ("capture: ...") may come first; the error is one line, the last
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        assert code == 2 and errors == lines[-1:], (name, argv, code, stderr, exception)
        assert "Traceback" not in stderr and ("File too large" in lines[-1] or "cannot write" in lines[-1]), lines[-1]
    assert not list(out.iterdir()), f"a failed write left {list(out.rglob('*'))}"


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs, nearly full (needs root and permission to mount; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 4096))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_really_full_disk_is_one_error_line(world, tiny_disk):
    for command, args in [
        ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/o.mp4"]),
        ("run", ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--tokens", "{out}/t.rtok"]),
        ("decode", ["{stream}", "--checkpoint", "{ck}", "--backend", "torch", "-o", "{out}/d.avi"]),
        ("train", ["{root}/data", "-o", "{out}/run", *FAST_TRAIN]),
    ]:
        result = invoke(command, args, world, tiny_disk)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and [line for line in lines if line.startswith("error:")] == lines[-1:], \
            (command, result.stderr, result.exception)
        assert "No space left on device" in lines[-1] or "cannot write" in lines[-1], lines[-1]
        assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"], (command, list(tiny_disk.iterdir()))


NON_UTF8_SCRIPT = """
import json, os, sys
from click.testing import CliRunner
cases = json.loads(sys.argv[1])
out = []
for name, argv in cases:
    main = __import__(f"reftok_deploy.cli.{name}", fromlist=["main"]).main
    argv = [os.fsdecode(bytes.fromhex(a)) for a in argv]
    r = CliRunner().invoke(main, argv)
    out.append([r.exit_code, r.stderr, repr(r.exception)])
print(json.dumps(out))
"""


def test_file_names_that_are_not_utf8_are_refused_not_crashed_on(world, tmp_path):
    odd = os.fsencode(tmp_path) + b"/\xff\xfe"
    shutil.copy(world["video"], odd + b".avi")
    video, ck = os.fsencode(world["video"]), os.fsencode(world["ck"])
    cases = [
        ("run", [b"--video", odd + b".avi", b"--checkpoint", ck, b"--backend", b"torch"], "--video"),
        ("run", [b"--video", video, b"--checkpoint", ck, b"--backend", b"torch", b"-o", odd + b"-o.mp4"], "--output"),
        ("run", [b"--source", b"file://" + odd + b".avi", b"--checkpoint", ck, b"--backend", b"torch"], "--source"),
        ("eval", [b"--video", odd + b".avi", b"--checkpoint", ck, b"--no-twin", b"--no-x264"], "--video"),
        ("eval", [b"--video", video, b"--checkpoint", ck, b"--no-twin", b"--no-x264", b"--grid", odd], "--grid"),
    ]
    encoded = [[name, [a.hex() for a in argv]] for name, argv, _ in cases]
    child = subprocess.run([sys.executable, "-c", NON_UTF8_SCRIPT, json.dumps(encoded)], capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]  # a crash inside OpenCV would be SIGSEGV here
    for (name, _, what), (code, stderr, exception) in zip(cases, json.loads(child.stdout.splitlines()[-1])):
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "not valid UTF-8" in lines[0] and what in lines[0], (name, stderr)
    assert sorted(os.listdir(os.fsencode(tmp_path))) == [b"\xff\xfe.avi"]
