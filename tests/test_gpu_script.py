"""benchmarks/gpu.sh on a machine without a GPU: it starts, says so, runs nothing, exits 0."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def gpu_sh(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PY": sys.executable, "OUT": ""}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run")
@pytest.mark.parametrize("mode", ["recipe", "speed", "tables"])
def test_gpu_script_says_no_gpu_and_runs_nothing(mode):
    done = gpu_sh(mode)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU is present" in done.stdout


def test_gpu_script_refuses_an_unknown_mode():
    done = gpu_sh("bogus")
    assert done.returncode == 2 and "usage: gpu.sh [recipe|speed|tables]" in done.stderr
