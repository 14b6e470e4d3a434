"""Thin commands: every console script parses options, hands the work to a library and prints the result.

- every ``main()`` in reftok_deploy/cli is at most 50 lines (from ``def`` to its last line);
- no command opens checkpoints, export folders or runners itself: they go through
  :class:`reftok_deploy.deploy.deployment.Deployment` or a library function that does the work;
- every option of every command says what it does in ``--help``, and the backend list is spelled once.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLI = sorted((ROOT / "reftok_deploy" / "cli").glob("*.py"))
MAX_MAIN_LINES = 50
# What opens a checkpoint, an export folder or a runner: the resolver's and the libraries' job, not a command's.
RESOLVER_NAMES = {"default_checkpoint", "load_checkpoint", "open_export", "make_runner", "make_runners", "auto_backend",
                  "cached_export"}
COMMANDS = ("train", "eval", "export", "parity", "bench", "run", "decode", "tokenize")


def command(name: str) -> click.Command:
    import importlib

    return importlib.import_module(f"reftok_deploy.cli.{name}").main


@pytest.mark.parametrize("path", CLI, ids=lambda p: p.name)
def test_every_main_is_at_most_50_lines(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_MAIN_LINES, f"{path.name}: main() is {length} lines (at most {MAX_MAIN_LINES})"


@pytest.mark.parametrize("path", CLI, ids=lambda p: p.name)
def test_no_command_opens_checkpoints_exports_or_runners_itself(path):
    used = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            used += [(node.lineno, alias.name.rsplit(".", 1)[-1]) for alias in node.names]
        elif isinstance(node, ast.Name):
            used.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            used.append((node.lineno, node.attr))
    offenders = [f"{path.name}:{line}: {name}" for line, name in used if name in RESOLVER_NAMES]
    assert not offenders, "use reftok_deploy.deploy.deployment.Deployment: " + ", ".join(offenders)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help(name):
    cmd = command(name)
    missing = [max(p.opts, key=len) for p in cmd.params
               if isinstance(p, click.Option) and not p.hidden and not (p.help or "").strip()]
    assert not missing, f"reftok-{name}: options without help: {missing}"


def test_sizes_and_backends_are_spelled_one_way():
    from reftok_deploy.cli.options import BACKEND_CHOICES, SIZE_RANGE

    for name in COMMANDS:
        for param in command(name).params:
            if not isinstance(param, click.Option):
                continue
            if param.name == "size" and isinstance(param.type, click.IntRange):
                assert (param.type.min, param.type.max) == (SIZE_RANGE.min, SIZE_RANGE.max), name
            if param.name in ("backend", "backends", "baseline", "candidate"):
                assert BACKEND_CHOICES in param.help, f"reftok-{name} {param.opts}: spell the backends with BACKEND_CHOICES"


def test_train_presets_match_the_model():
    from reftok_deploy.cli.train import PRESET_NAMES
    from reftok_deploy.model.reftok import PRESETS

    assert tuple(sorted(PRESETS)) == PRESET_NAMES


@pytest.mark.parametrize("name", ["train", "export", "run"])
def test_help_does_not_import_torch(name):
    """--help of a command answers without loading PyTorch (seconds on a small machine)."""
    code = (f"import sys; import reftok_deploy.cli.{name} as m; "
            "assert 'torch' not in sys.modules, sorted(k for k in sys.modules if k.startswith('reftok'))")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.perf_counter() - started < 30
