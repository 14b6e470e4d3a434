"""Layers that point one way, and the graphs' I/O names declared in one module.

base (spec, files, manifest, engines, graph_regions, errors): no torch, no other layer
export and calibration (export uses calibration)        runtimes
          \\                                              /
           validation, parity, bench, backends (use both)
                              cli (on top)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = ["reftok_deploy.spec", "reftok_deploy.files", "reftok_deploy.manifest", "reftok_deploy.engines",
        "reftok_deploy.graph_regions", "reftok_deploy.errors"]
ABOVE_BOTH = ["reftok_deploy.validation", "reftok_deploy.parity", "reftok_deploy.bench", "reftok_deploy.backends",
              "reftok_deploy.cli"]
# package folder -> module prefixes its code (module level or inside functions) must never import
FORBIDDEN = {
    "export": ["reftok_deploy.runtimes", *ABOVE_BOTH],
    "runtimes": ["reftok_deploy.export", "reftok_deploy.calibration", *ABOVE_BOTH],
    "calibration": ["reftok_deploy.export", "reftok_deploy.runtimes", *ABOVE_BOTH],
}
BASE_FILES = ["spec.py", "files.py", "manifest.py", "engines.py", "graph_regions.py", "errors.py"]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every absolute module name a file imports, wherever the import statement is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def fresh_import(modules: list[str]) -> set[str]:
    """Names in sys.modules after importing ``modules`` in a new interpreter."""
    code = f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_packages_import_only_downward(folder):
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}"
                 for path in sorted((ROOT / folder).glob("*.py")) for line, name in imported_modules(path)
                 if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[folder])]
    assert not offenders, "\n".join(offenders)


def test_base_layer_imports_no_other_layer():
    allowed = set(BASE)
    offenders = []
    for name in BASE_FILES:
        path = ROOT / "reftok_deploy" / name
        for line, module in imported_modules(path):
            if module.startswith("reftok_deploy") and module not in allowed:
                offenders.append(f"{name}:{line}: {module}")
    assert not offenders, "\n".join(offenders)


def test_runtime_layer_loads_without_torch_or_export():
    loaded = fresh_import(BASE + ["reftok_deploy.runtimes.factory", "reftok_deploy.runtimes.onnxruntime_runner",
                                  "reftok_deploy.runtimes.tensorrt_runner", "reftok_deploy.runtimes.stream",
                                  "reftok_deploy.runtimes.capture", "reftok_deploy.runtimes.output"])
    assert "torch" not in loaded
    assert not {m for m in loaded if m.startswith(("reftok_deploy.export", "reftok_deploy.calibration"))}


def test_export_layer_loads_without_runtimes_or_parity():
    loaded = fresh_import(["reftok_deploy.export.pipeline", "reftok_deploy.export.tensorrt_build",
                           "reftok_deploy.calibration.qdq", "reftok_deploy.calibration.feeds"])
    assert not {m for m in loaded if m.startswith(("reftok_deploy.runtimes", *ABOVE_BOTH))}


def test_base_layer_loads_without_torch():
    loaded = fresh_import(BASE)
    assert "torch" not in loaded and "cv2" not in loaded
    assert not {m for m in loaded if m.startswith("reftok_deploy.") and m not in BASE}


IO_NAMES = {"reference", "frames", "tokens", "reconstruction"}
IO_FILES = [*(ROOT / "runtimes").glob("*.py"), *(ROOT / "export").glob("*.py"), *(ROOT / "calibration").glob("*.py"),
            *(ROOT / "reftok_deploy" / "cli").glob("*.py"),
            *(ROOT / "reftok_deploy" / f"{m}.py" for m in ("parity", "bench", "validation", "backends"))]


def test_io_names_are_spelled_only_in_the_spec():
    """Feeds and outputs are indexed and built through reftok_deploy.spec, never by string literal."""
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
