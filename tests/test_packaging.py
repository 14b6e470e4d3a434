"""The wheel installs everything under reftok_deploy/ and every console script answers --help."""

import configparser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("reftok_deploy-*.whl")
    return path


def test_every_entry_is_namespaced(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("reftok_deploy/") for n in code), [n for n in code if not n.startswith("reftok_deploy/")]
    for sub in ("export", "runtimes", "calibration", "cli"):
        assert f"reftok_deploy/{sub}/__init__.py" in names
    assert "reftok_deploy/weights/reftok/model.safetensors" in names
    assert "reftok_deploy/weights/twin/config.json" in names


def test_installed_wheel_runs_every_console_script(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert not (target / "export").exists() and not (target / "runtimes").exists()
    (dist,) = target.glob("reftok_deploy-*.dist-info")
    scripts = configparser.ConfigParser()
    scripts.read(dist / "entry_points.txt")
    commands = dict(scripts["console_scripts"])
    assert {"reftok-train", "reftok-eval"} <= set(commands)
    # Run from an empty folder so the source tree cannot shadow the installed package.
    env = {**os.environ, "PYTHONPATH": str(target)}
    for name, ref in commands.items():
        module, func = ref.split(":")
        code = f"import sys; sys.argv=[{name!r}, '--help']; from {module} import {func}; {func}()"
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0 and "Usage:" in result.stdout, (name, result.stderr)
        located = subprocess.run([sys.executable, "-c", f"import {module}; print({module}.__file__)"], cwd=tmp_path,
                                 env=env, capture_output=True, text=True).stdout
        assert located.startswith(str(target)), located


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'bash tests/setup.sh && .venv/bin/python -m pytest -q -m "not slow and not gpu"'
    assert command in readme and command in ci
