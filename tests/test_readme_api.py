"""README's "Python API" example runs as written and prints what README says it prints."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Python API"


def readme_section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n")
    following = re.search(rf"\n#{{1,{level}}} ", text[start + len(heading) + 2:])
    return text[start:start + len(heading) + 2 + following.start()] if following else text[start:]


def python_blocks(section: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", section, flags=re.S | re.M)


def test_readme_python_api_example_runs_as_written(tmp_path):
    section = readme_section((ROOT / "README.md").read_text(encoding="utf-8"), HEADING)
    blocks = python_blocks(section)
    assert len(blocks) == 1, f"README's {HEADING!r} section should hold one ```python block, found {len(blocks)}"
    script = tmp_path / "example.py"
    script.write_text(blocks[0], encoding="utf-8")
    # An empty folder as cwd: the example must not depend on files of the checkout.
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "tokens (1, 2, 32, 32) torch.int32" in out, out
    measured = re.search(r"^PSNR (\d+\.\d+) dB$", out, flags=re.M)
    assert measured, out
    # The prose after the block quotes the output: keep it true.
    quoted = re.search(r"`PSNR (\d+\.\d+) dB`", section)
    assert quoted and "`tokens (1, 2, 32, 32) torch.int32`" in section, "README should quote the example's output"
    assert abs(float(measured.group(1)) - float(quoted.group(1))) <= 0.02, (measured.group(0), quoted.group(0))


def test_section_extraction_finds_the_block_and_stops_at_the_next_heading():
    text = "# t\n\n## Python API\n\nintro\n\n```python\nprint(1)\n```\n\n### sub\n\n## Next\n\n```python\nx\n```\n"
    section = readme_section(text, HEADING)
    assert python_blocks(section) == ["print(1)\n"]
