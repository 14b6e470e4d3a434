"""README's command blocks, run as written: the Install block, then "A first session", in one shell, in a
copy of the repository in a temp folder made a git repository (the quick start has its own test: it is what
.ci/run runs). Afterwards `git status` must be clean: the session writes only into its ignored folder.

Also acceptance for the CPU install path: the venv the Install block makes holds no CUDA packages.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_packaging import cuda_distributions

REPO = Path(__file__).resolve().parents[1]
SKIPPED_SECTIONS = ("Quick start",)


def command_blocks(readme: str) -> list[tuple[str, str]]:
    """(section heading, body) of every ```bash block outside the skipped sections, in order."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#{2,3} [^\n]*)$|^```bash\n(.*?)^```$", readme, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        elif not heading.startswith(SKIPPED_SECTIONS):
            blocks.append((heading, match.group(2)))
    return blocks


def test_readme_blocks_are_found():
    blocks = command_blocks((REPO / "README.md").read_text())
    headings = [h for h, _ in blocks]
    assert headings == ["Install", "A first session"], headings
    assert "pip install" in blocks[0][1] and "reftok-export" in blocks[1][1]


def copy_repository(target: Path) -> None:
    """The files git would put in a clone (tracked, plus new files not ignored), nothing built or downloaded."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.mark.slow  # end-to-end tier: a fresh venv, README's install and first session as written (~8 min on 2 cores)
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="the sample clips come from Debian's opencv-doc (apt-get)")
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the repository's files")
def test_readme_command_blocks_run_as_written(tmp_path):
    work = tmp_path / "reftok-deploy"
    work.mkdir()
    copy_repository(work)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@localhost"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "as cloned"]):
        subprocess.run(git + args, cwd=work, check=True, capture_output=True)
    script = "\n".join(body for _, body in command_blocks((REPO / "README.md").read_text()))
    (tmp_path / "readme.sh").write_text(script)  # outside the checkout: it must stay as cloned
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # the test's own venv must not answer for the commands: only the one the Install block makes
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not Path(p, "python").exists() or Path(p).resolve() != Path(sys.executable).parent.resolve())
    env["REFTOK_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run(["bash", "-euo", "pipefail", str(tmp_path / "readme.sh")], cwd=work, env=env, capture_output=True,
                            text=True, timeout=1500)
    log = result.stdout[-4000:] + "\n--- stderr ---\n" + result.stderr[-6000:]
    assert result.returncode == 0, log
    manifest = json.loads((work / "first-session" / "export" / "manifest.json").read_text())
    assert manifest["precisions"] == ["fp32", "fp16", "int8"], manifest["precisions"]
    assert manifest["validation"]["ok"] and manifest["calibration"]["feeds"] == 8
    shas = re.findall(r"reconstruction sha256 ([0-9a-f]{64})", result.stdout)
    assert len(shas) >= 2 and shas[0] == shas[1], log  # reftok-decode replays reftok-run's stream exactly
    for name in ("box.mp4", "box.rtok", "box_decoded.mp4", "run/checkpoint/model.safetensors"):
        assert (work / "first-session" / name).is_file(), name
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=work, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", f"README's blocks left files in the checkout's source folders:\n{status}"
    ignored = [line[3:].strip('"') for line in subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                                                   cwd=work, capture_output=True, text=True, check=True).stdout.splitlines()
               if line.startswith("!! ")]
    stray = [p for p in ignored if not p.startswith((".venv", "first-session/"))
             and "__pycache__/" not in p and ".egg-info/" not in p]
    assert not stray, f"written into the checkout, hidden by .gitignore: {stray}"
    probe = ("import json, importlib.metadata as m; print(json.dumps([{'name': d.metadata['Name'], "
             "'version': d.version, 'requires': d.requires} for d in m.distributions()]))")
    listed = subprocess.run([str(work / ".venv" / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                            check=True).stdout

    class Dist:
        def __init__(self, entry):
            self.metadata, self.version, self.requires = {"Name": entry["name"]}, entry["version"], entry["requires"]

    dists = [Dist(e) for e in json.loads(listed)]
    assert any(d.metadata["Name"] == "torch" for d in dists)
    found = cuda_distributions(dists)
    assert not found, f"README's CPU install path pulled CUDA packages: {', '.join(found)}"
