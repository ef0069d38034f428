"""The README's Python example is at most ten lines and runs as written."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

PACKAGE_README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
ROOT_README = PACKAGE_README.parent.parent / "README.md"


def python_example(text: str, after: str = "") -> str:
    """The first ```python block after the heading ``after`` (and before the next heading)."""
    if after:
        start = text.index(after) + len(after)
        next_heading = re.compile(r"^#{1,6} ", re.M).search(text, start)
        text = text[start : next_heading.start() if next_heading else len(text)]
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert blocks, f"no python example {'under ' + after if after else ''}"
    return str(blocks[0])


def test_readme_example_runs_as_written() -> None:
    example = python_example(ROOT_README.read_text(), after="### From Python")
    assert python_example(PACKAGE_README.read_text()) == example, "the two READMEs' examples differ"
    lines = example.splitlines()
    assert len(lines) <= 10, f"the example has {len(lines)} lines, not at most ten"
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'hello through the tunnel'"
