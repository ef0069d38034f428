"""The benchmark script runs (smallest size, one round) and reports every API."""

from __future__ import annotations

import pathlib
import subprocess
import sys

BULK = pathlib.Path(__file__).resolve().parent.parent / "bench" / "bulk.py"


def test_bulk_benchmark_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(BULK), "--size-mib", "1", "--rounds", "1"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    assert "echo of 1 MiB each way" in out.stdout
    for api in ("Rust API", "Python (blocking)", "Python (asyncio)"):
        assert api in out.stdout, out.stdout
