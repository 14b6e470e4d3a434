"""README's "A first session" block, run as written in a clean clone, must leave the clone clean.

A fresh `git clone` of this checkout's committed HEAD (so the README and .gitignore under test are the
committed ones), with this checkout's existing `.venv` reused through a `.venv` symlink in the clone instead
of a new install. The venv is an editable install of this checkout, so its `reftok-*` scripts would import
this checkout's code; a `sitecustomize` on PYTHONPATH puts a finder first in `sys.meta_path` that maps the
package and its three source folders (`pyproject.toml`'s package-dir) to the clone, so the commands run the
clone's code (checked before the block runs). PATH holds no venv, so a bare `reftok-...` in the block fails
as it would in a new shell. After the block, `git status` must list nothing, and everything git ignores must
be the venv link, `__pycache__` or under `first-session/` (no output hidden by another ignore pattern).

REFTOK_FIRST_SESSION_OVERLAY=README.md,.gitignore (paths relative to the checkout) copies those files of the
working tree into the clone and commits them there first: for trying documentation before committing it.
"""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.test_readme_commands import command_blocks

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
HEADING = "A first session"
OUTPUTS = "first-session/"

FINDER = '''"""Written by tests/test_first_session.py: import reftok_deploy from the clone, not the editable install."""
import importlib.util
import sys

FOLDERS = {folders!r}


class CloneFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        folder = FOLDERS.get(name)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(name, folder + "/__init__.py",
                                                      submodule_search_locations=[folder])


sys.meta_path.insert(0, CloneFinder)
'''


def first_session_block(readme: str) -> str:
    found = [body for heading, body in command_blocks(readme) if heading == HEADING]
    assert len(found) == 1, f"README has {len(found)} bash blocks under '{HEADING}'"
    return found[0]


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def package_folders(root: Path) -> dict[str, str]:
    """Import name -> folder in ``root`` for every package folder pyproject.toml maps (package-dir)."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: str(root / folder) for name, folder in config["package-dir"].items()}


def test_first_session_block_is_found():
    block = first_session_block((REPO / "README.md").read_text())
    assert "reftok-export" in block and OUTPUTS in block


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to clone the repository")
@pytest.mark.skipif(not (VENV / "bin" / "python").exists(), reason="needs this checkout's .venv (bash tests/setup.sh)")
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="the sample clips come from Debian's opencv-doc (apt-get)")
def test_first_session_leaves_a_clean_clone(tmp_path):
    clone = tmp_path / "reftok-deploy"
    git("clone", "--quiet", str(REPO), str(clone), cwd=tmp_path)
    overlay = [p for p in os.environ.get("REFTOK_FIRST_SESSION_OVERLAY", "").split(",") if p]
    if overlay:
        for name in overlay:
            shutil.copy2(REPO / name, clone / name)
        git("add", "--", *overlay, cwd=clone)
        git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "--quiet", "--allow-empty",
            "-m", "working-tree overlay: " + ", ".join(overlay), cwd=clone)
    (clone / ".venv").symlink_to(VENV)
    assert git("status", "--porcelain", "--untracked-files=all", cwd=clone) == "", "the clone is not clean to start with"

    hook = tmp_path / "clone-imports"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FINDER.format(folders=package_folders(clone)))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venvs = {(VENV / "bin").resolve(), Path(sys.executable).parent.resolve()}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() not in venvs)
    env["PYTHONPATH"] = str(hook)
    env["REFTOK_CACHE"] = str(tmp_path / "cache")

    probe = ("import json, reftok_deploy, reftok_deploy.export, reftok_deploy.runtimes, reftok_deploy.calibration, "
             "reftok_deploy.cli.export as e; print(json.dumps([m.__file__ for m in (reftok_deploy, reftok_deploy.export, "
             "reftok_deploy.runtimes, reftok_deploy.calibration, e)]))")
    files = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c", probe], cwd=clone, env=env,
                           capture_output=True, text=True, check=True).stdout
    for name in json.loads(files):
        assert Path(name).resolve().is_relative_to(clone.resolve()), f"{name} is not the clone's code"

    script = first_session_block((clone / "README.md").read_text())
    (tmp_path / "first-session.sh").write_text(script)
    result = subprocess.run(["bash", "-euo", "pipefail", str(tmp_path / "first-session.sh")], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=1500)
    log = result.stdout[-4000:] + "\n--- stderr ---\n" + result.stderr[-6000:]
    assert result.returncode == 0, log
    assert (clone / OUTPUTS / "export" / "manifest.json").is_file(), "the block wrote no export into first-session/"

    status = git("status", "--porcelain", "--untracked-files=all", cwd=clone)
    assert status == "", f"README's first session left files in the checkout:\n{status}"
    ignored = [line[3:] for line in git("status", "--porcelain", "--ignored", "--untracked-files=all",
                                        cwd=clone).splitlines() if line.startswith("!! ")]
    stray = [p for p in ignored if p != ".venv" and not p.startswith(OUTPUTS) and "__pycache__/" not in p]
    assert not stray, f"written into the checkout, hidden by .gitignore: {stray}"
