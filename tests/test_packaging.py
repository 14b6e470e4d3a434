"""The wheel installs everything under reftok_deploy/ and every console script answers --help.

Building and installing the wheel is the end-to-end tier (``-m slow``, .ci/run's second step); the default
tier checks the same from pyproject.toml and the source tree, in-process.
"""

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


@pytest.mark.slow  # end-to-end tier: builds the wheel
def test_every_entry_is_namespaced(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if ".dist-info/" not in n]
    assert code and all(n.startswith("reftok_deploy/") for n in code), [n for n in code if not n.startswith("reftok_deploy/")]
    for sub in ("export", "runtimes", "calibration", "cli"):
        assert f"reftok_deploy/{sub}/__init__.py" in names
    assert "reftok_deploy/weights/reftok/model.safetensors" in names
    assert "reftok_deploy/weights/twin/config.json" in names


@pytest.mark.slow  # end-to-end tier: installs the wheel, a process per console script
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


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_wheel_is_declared_to_hold_every_package_the_weights_and_the_license():
    """What the wheel tests check after a build, read from pyproject.toml: every folder with an __init__.py under
    the package roots is a listed package, export/, runtimes/ and calibration/ install under reftok_deploy, every
    file of the shipped weights matches a package-data pattern, and LICENSE is the license file."""
    from fnmatch import fnmatch

    config = pyproject()
    setuptools = config["tool"]["setuptools"]
    roots = setuptools["package-dir"]
    assert roots == {"reftok_deploy": "reftok_deploy", "reftok_deploy.export": "export",
                     "reftok_deploy.runtimes": "runtimes", "reftok_deploy.calibration": "calibration"}, roots
    found = set()
    for name, folder in roots.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            found.add(".".join((name, *init.parent.relative_to(ROOT / folder).parts)))
    assert set(setuptools["packages"]) == found, sorted(found ^ set(setuptools["packages"]))
    patterns = setuptools["package-data"]["reftok_deploy"]
    weights = [p.relative_to(ROOT / "reftok_deploy").as_posix() for p in (ROOT / "reftok_deploy" / "weights").rglob("*")
               if p.is_file()]
    assert "weights/reftok/model.safetensors" in weights and "weights/twin/config.json" in weights
    assert not [w for w in weights if not any(fnmatch(w, pattern) for pattern in patterns)], patterns
    assert config["project"]["license-files"] == ["LICENSE"] and config["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()


def test_every_console_script_answers_help():
    """Every [project.scripts] entry names a command that answers --help (in-process; the installed wheel's scripts
    are run in the end-to-end tier)."""
    import importlib

    from click.testing import CliRunner

    scripts = pyproject()["project"]["scripts"]
    assert {"reftok-train", "reftok-eval", "reftok-export", "reftok-run"} <= set(scripts)
    for name, ref in scripts.items():
        module, func = ref.split(":")
        result = CliRunner().invoke(getattr(importlib.import_module(module), func), ["--help"], prog_name=name)
        assert result.exit_code == 0 and f"Usage: {name}" in result.output, (name, result.output)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'bash tests/setup.sh && .venv/bin/python -m pytest -q -m "not slow and not gpu"'
    assert command in readme and command in ci


def cuda_distributions(dists) -> list[str]:
    """Names (with versions) of the distributions in ``dists`` that belong to a CUDA install:
    ``nvidia-*`` libraries, triton, or a torch built for CUDA (``+cu`` version, or requiring nvidia-*)."""
    import re

    found = []
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        version = dist.version or ""
        requires = [r for r in (dist.requires or []) if "extra ==" not in r]
        if name.startswith("nvidia-") or name in ("triton", "pytorch-triton"):
            found.append(f"{name} {version}")
        elif name == "torch" and ("+cu" in version or any(re.match(r"nvidia[-_]", r.lower()) for r in requires)):
            found.append(f"torch {version} (a CUDA build)")
    return sorted(found)


def test_setup_venv_has_no_cuda_packages():
    """README's CPU install (tests/setup.sh for this repo's .venv) leaves no nvidia-* package behind."""
    from importlib.metadata import distributions

    venv = ROOT / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip(f"not running in {venv} made by tests/setup.sh (running in {sys.prefix})")
    found = cuda_distributions(distributions())
    assert not found, f"CUDA packages in a CPU venv (install torch from PyTorch's CPU index first): {', '.join(found)}"


def test_cuda_distributions_are_named():
    class Dist:
        def __init__(self, name, version, requires=None):
            self.metadata, self.version, self.requires = {"Name": name}, version, requires

    cpu = [Dist("torch", "2.13.0+cpu", ["filelock", 'optree>=0.13.0; extra == "optree"']), Dist("numpy", "2.1.0")]
    assert cuda_distributions(cpu) == []
    cuda = cpu + [Dist("nvidia-cublas-cu12", "12.8.4.1"), Dist("nvidia_cudnn_cu12", "9.1"), Dist("triton", "3.5.0"),
                  Dist("torch", "2.13.0", ['nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"']),
                  Dist("torch", "2.13.0+cu128")]
    assert cuda_distributions(cuda) == ["nvidia-cublas-cu12 12.8.4.1", "nvidia-cudnn-cu12 9.1",
                                        "torch 2.13.0 (a CUDA build)", "torch 2.13.0+cu128 (a CUDA build)",
                                        "triton 3.5.0"]


@pytest.mark.slow  # end-to-end tier: builds the wheel
def test_license_ships_in_the_wheel(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if ".dist-info/" in n and n.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses, names
    text = zipfile.ZipFile(wheel).read(licenses[0]).decode()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (ROOT / "LICENSE").read_text()
