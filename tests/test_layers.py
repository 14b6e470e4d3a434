"""Layers that point one way, read off the folders, and the graphs' I/O names declared in one module.

The folders are the layer diagram (ARCHITECTURE.md draws it): each folder may import only the folders
listed for it in :data:`MAY_IMPORT`, wherever the import statement is (module level or inside a function).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the other folders its modules may import (reftok_deploy/<folder>, or the top-level export/,
# runtimes/, calibration/ installed as reftok_deploy.export, .runtimes, .calibration)
MAY_IMPORT = {
    "base": set(),
    "model": {"base"},
    "quality": {"base", "model"},
    "calibration": {"base", "model"},
    "export": {"base", "model", "calibration"},
    "runtimes": {"base", "model", "quality"},
    "deploy": {"base", "model", "quality", "calibration", "export", "runtimes"},
    "dataset": {"base", "model", "quality", "runtimes", "deploy"},
    "serve": {"base", "model", "quality", "runtimes", "deploy"},
    "cli": {"base", "model", "quality", "calibration", "export", "runtimes", "deploy", "dataset", "serve"},
}
TOP_LEVEL = ("export", "runtimes", "calibration")


def folder_files(folder: str) -> list[Path]:
    where = ROOT / folder if folder in TOP_LEVEL else ROOT / "reftok_deploy" / folder
    return sorted(where.glob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name a file imports, wherever the import statement is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_every_module_sits_in_a_layer_folder():
    loose = [p.name for p in (ROOT / "reftok_deploy").glob("*.py") if p.name != "__init__.py"]
    folders = {p.name for p in (ROOT / "reftok_deploy").iterdir() if (p / "__init__.py").exists()}
    assert not loose, f"modules outside a layer folder: {loose}"
    assert folders | set(TOP_LEVEL) == set(MAY_IMPORT), "a package folder missing from MAY_IMPORT (or gone)"


def test_no_two_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for folder in MAY_IMPORT:
        for path in folder_files(folder):
            if path.name != "__init__.py":
                names.setdefault(path.stem, []).append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}


@pytest.mark.parametrize("folder", sorted(MAY_IMPORT))
def test_folders_import_only_the_layers_below(folder):
    allowed = MAY_IMPORT[folder] | {folder}
    offenders = []
    for path in folder_files(folder):
        for line, name in imported_modules(path):
            parts = name.split(".")
            if parts[0] == "reftok_deploy" and len(parts) > 1 and parts[1] not in allowed:
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert not offenders, "\n".join(offenders)


def test_library_modules_have_no_main_block():
    offenders = [str(p.relative_to(ROOT)) for folder in MAY_IMPORT if folder != "cli" for p in folder_files(folder)
                 if "__main__" in p.read_text()]
    assert not offenders


BASE = [f"reftok_deploy.base.{p.stem}" for p in folder_files("base") if p.name != "__init__.py"]


def fresh_import(modules: list[str]) -> set[str]:
    """Names in sys.modules after importing ``modules`` in a new interpreter."""
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_runtime_layer_loads_without_torch_or_export():
    loaded = fresh_import([*BASE, "reftok_deploy.runtimes.factory", "reftok_deploy.runtimes.onnxruntime_runner",
                                  "reftok_deploy.runtimes.tensorrt_runner", "reftok_deploy.runtimes.stream",
                                  "reftok_deploy.runtimes.capture", "reftok_deploy.runtimes.output"])
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith(("reftok_deploy.export", "reftok_deploy.calibration"))}


def test_export_layer_loads_without_runtimes_or_deploy():
    loaded = fresh_import(["reftok_deploy.export.job", "reftok_deploy.export.tensorrt_build",
                           "reftok_deploy.calibration.qdq", "reftok_deploy.calibration.feeds"])
    assert not {m for m in loaded if m.startswith(("reftok_deploy.runtimes", "reftok_deploy.deploy", "reftok_deploy.dataset", "reftok_deploy.cli"))}


def test_base_layer_loads_without_torch():
    loaded = fresh_import(BASE)
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith("reftok_deploy.") and not m.startswith("reftok_deploy.base")
                and m != "reftok_deploy"}


IO_NAMES = {"reference", "frames", "tokens", "reconstruction"}
IO_FILES = [*(ROOT / "runtimes").glob("*.py"), *(ROOT / "export").glob("*.py"), *(ROOT / "calibration").glob("*.py"),
            *(ROOT / "reftok_deploy" / "cli").glob("*.py"),
            *(ROOT / "reftok_deploy" / "deploy").glob("*.py")]


def test_io_names_are_spelled_only_in_the_spec():
    """Feeds and outputs are indexed and built through reftok_deploy.base.spec, never by string literal."""
    offenders = []
    for path in IO_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            keys = []
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                keys = [node.slice.value]
            elif isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant) and k.value != "frames"]
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {k!r}" for k in keys if k in IO_NAMES]
    assert not offenders, "\n".join(offenders)
