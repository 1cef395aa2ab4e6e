"""Every benchmark answers --help with its usage and does nothing else: no file written, no run started."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_a_benchmark_answers_help_without_running(tmp_path, script):
    cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "NO_ALBUMENTATIONS_UPDATE": "1"}
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)  # a bound on a hung run, not a timing
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and script.name in result.stdout
    # no output, and no work folder (tempfile's names; torch and Spark leave their caches in TMPDIR on import)
    assert list(cwd.iterdir()) == [] and [p.name for p in temp.iterdir() if p.name.startswith(("tmp", "bench"))] == []
