"""Hundreds of bad invocations of the eight commands, made by walking their click parameters: every one
exits 2 with exactly one ``error:`` line and no traceback, in seconds, changes no input and leaves no output."""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reftok_deploy.cli.bench import main as bench_main
from reftok_deploy.cli.decode import main as decode_main
from reftok_deploy.cli.eval import main as eval_main
from reftok_deploy.cli.export import main as export_main
from reftok_deploy.cli.parity import main as parity_main
from reftok_deploy.cli.run import main as run_main
from reftok_deploy.cli.tokenize import main as tokenize_main
from reftok_deploy.cli.train import main as train_main
from tests.conftest import tree_listing

COMMANDS = {"train": train_main, "eval": eval_main, "export": export_main, "parity": parity_main,
            "bench": bench_main, "run": run_main, "decode": decode_main, "tokenize": tokenize_main}
# A valid, cheap invocation of each command; a case appends one bad option to it (click keeps the last value).
BASE = {
    "train": ["{root}/data", "-o", "{out}/run", "--steps", "1", "--batch", "1", "--crop", "32", "--no-builtin-stills",
              "--threads", "1"],
    "eval": ["--video", "{video}", "--checkpoint", "{ck}", "--no-twin", "--no-x264", "--max-gops", "1"],
    "export": ["--checkpoint", "{ck}", "-o", "{out}/e", "--no-validate", "--exporter", "torchscript"],
    "parity": ["{export}", "--checkpoint", "{ck}", "--max-gops", "1"],
    "bench": ["{export}", "--checkpoint", "{ck}", "--max-gops", "1", "--repeats", "1", "--model-only"],
    "run": ["--video", "{video}", "--checkpoint", "{ck}", "--backend", "torch", "--max-frames", "9"],
    "decode": ["{stream}", "--checkpoint", "{ck}", "--backend", "torch"],
    "tokenize": ["{video}", "-o", "{out}/ds", "--checkpoint", "{ck}", "--backend", "torch"],
}
NOT_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e999"]
HUGE_INTS = [str(10**12), str(-10**12), "-1"]
HUGE_FLOATS = ["1e300", "-1e300"]


def numeric_options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag
            and isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))]


def numeric_cases() -> list[tuple[str, list[str], str]]:
    """(command, extra args, fragment of the error) for every numeric option of every command."""
    cases = []
    for name, command in COMMANDS.items():
        for option in numeric_options(command):
            flag = max(option.opts, key=len)
            is_int = isinstance(option.type, click.types.IntParamType)
            for value in NOT_NUMBERS + (HUGE_INTS if is_int else HUGE_FLOATS):
                if value == "-1" and isinstance(option.type, click.IntRange) and option.type.min is not None \
                        and option.type.min <= -1:
                    continue
                cases.append((name, [flag, value], flag))
    return cases


def path_cases() -> list[tuple[str, list[str], str]]:
    """Missing, wrong-kind, unwritable and same-as-input paths for every path option and argument."""
    file_outputs = {"run": ["-o", "--tokens"], "decode": ["-o"]}
    folder_outputs = {"train": ["-o"], "export": ["-o"], "eval": ["--grid"]}
    cases = []
    for name, flags in file_outputs.items():
        for flag in flags:
            suffix = ".rtok" if flag == "--tokens" else ".mp4"
            cases += [(name, [flag, "{out}"], "is a directory"),
                      (name, [flag, "/proc/reftok-nope/x" + suffix], "not writable"),
                      (name, [flag, "{video}/x" + suffix], "is a file, not a folder")]
            cases += [(name, [flag, "{root}/hardlink.avi"], "")] if name == "run" else []
            cases += [(name, [flag, "{stream}"], "is the token stream")] if name == "decode" else []
    for name, flags in folder_outputs.items():
        for flag in flags:
            cases += [(name, [flag, "{video}"], "is a file"), (name, [flag, "/proc/reftok-nope/d"], "not writable")]
    for name, command in COMMANDS.items():
        cases += [(name, ["--no-such-option"], "No such option"), (name, ["stray-word"], "")]
        if any("--checkpoint" in p.opts for p in command.params):
            cases += [(name, ["--checkpoint", "{root}/none"], "not found"), (name, ["--checkpoint", "{video}"], "")]
    cases += [("run", ["--video", "{root}/none.avi"], "video not found"),
              ("run", ["--video", "{stream}"], "cannot open"),
              ("run", ["--export", "{root}/data"], "manifest"),
              ("eval", ["--video", "{stream}"], ""),
              ("eval", ["--video", "{root}/none.mp4"], "not found"),
              ("train", ["{root}/none"], "not found"),
              ("train", ["--init-from", "{video}"], ""),
              ("export", ["--validate-data", "{root}/none.mp4"], "not found"),
              ("export", ["--int8", "--calib-data", "{root}/none"], "not found"),
              ("parity", ["--video", "{stream}"], ""),
              ("bench", ["--video", "{root}/none.avi"], "not found")]
    return cases


def text_cases(rng: random.Random) -> list[tuple[str, list[str], str]]:
    """Words where a choice, a backend, a device, a size or a profile belongs."""
    garbage = ["", "x", "-1", "nan", "8,5,5,1", "999999999999x8", "cuda:99", "\u2603", "a" * 5000, "torch:fp64"]
    options = {"run": ["--backend", "--device", "--source"], "decode": ["--backend", "--device"],
               "train": ["--preset", "--fsq-levels", "--loss", "--device", "--autocast"],
               "export": ["--profile", "--calib-method", "--tensorrt", "--exporter"],
               "eval": ["--x264 --size"], "parity": ["--a", "--b", "--device"],
               "bench": ["--backends", "--size", "--device"]}
    cases = []
    for name, flags in options.items():
        for flag in flags:
            *extra, flag = flag.split()
            for value in rng.sample(garbage, 6):
                if flag == "--source" and value in ("", "nan", "x", "\u2603", "a" * 5000, "-1", "torch:fp64"):
                    value = "csi://" + value  # a bare word would be a file name
                cases.append((name, [*extra, flag, value], ""))
    return cases


CASES = numeric_cases() + path_cases() + text_cases(random.Random(28))


def test_the_fuzz_covers_every_command_with_300_cases():
    assert len(CASES) >= 300 and {c for c, _, _ in CASES} == set(COMMANDS)
    walked = {(name, max(o.opts, key=len)) for name, cmd in COMMANDS.items() for o in numeric_options(cmd)}
    assert {(name, args[0]) for name, args, _ in numeric_cases()} == walked and len(walked) >= 35


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeoutError in the test if the block runs longer (a hang is a failure, not a stuck suite)."""
    def expire(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def inputs(users_files, tmp_path_factory):
    return dict(users_files)


def test_every_bad_invocation_is_one_line_exit_2_and_touches_nothing(inputs, tmp_path):
    watched = [inputs["root"], Path(inputs["ck"]), Path(inputs["export"])]
    before = [tree_listing(folder) for folder in watched]
    out = tmp_path / "out"
    failures, slowest = [], (0.0, None)
    for name, extra, fragment in CASES:
        out.mkdir()
        argv = [a.format(out=out, **inputs) for a in BASE[name] + extra]
        started = time.perf_counter()
        with time_limit(120):
            result = CliRunner().invoke(COMMANDS[name], argv)
        elapsed = time.perf_counter() - started
        slowest = max(slowest, (elapsed, (name, extra)), key=lambda s: s[0])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        problems = []
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"raised {result.exception!r}")
        if result.exit_code != 2 or len(errors) != 1 or lines != errors or fragment not in errors[0]:
            problems.append(f"exit {result.exit_code}, stderr {result.stderr[-300:]!r}")
        if list(out.iterdir()):
            problems.append(f"left {[str(p.relative_to(out)) for p in out.rglob('*')]}")
        if problems:
            failures.append(f"{name} {[a[:40] for a in extra]}: {'; '.join(problems)}")
        shutil.rmtree(out)
    assert [tree_listing(folder) for folder in watched] == before, "an input was changed"
    assert not failures, f"{len(failures)} of {len(CASES)} cases:\n" + "\n".join(failures)
    assert slowest[0] < 30, slowest
