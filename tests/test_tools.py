"""The tools run: the GPU comparison (CPU against itself, as on a machine
without a GPU), a short differential-fuzzing run, and the GPU check's plan."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*args, timeout=300, env=None):
  return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                        env=None if env is None else {**os.environ, **env})


def test_gpu_compare_runs_on_the_cpu():
  result = _run(sys.executable, "tools/gpu_compare.py", "--platform", "cpu", "--small")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "5/5 cases agree" in result.stdout, result.stdout


@pytest.mark.slow  # (~17 s)
def test_fuzzer_finds_nothing_in_a_short_run(tmp_path):
  result = _run(sys.executable, "tools/fuzz.py", "--op", "all", "--minutes", "0.02",
                "--out", str(tmp_path))
  assert result.returncode == 0, result.stdout + result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["failures"] == 0
  assert set(summary["ops"]) == {"roi_pool", "roi_align", "multi_scale", "ps_roi_pool",
                                 "ps_roi_align", "roi_align_rotated", "prroi_pool"}
  assert all(op["cases"] > 0 for op in summary["ops"].values())


def test_gpu_check_plans_every_quick_step(tmp_path):
  # RESULTS_DIR: never the dated folder under benchmarks/results (committed results)
  result = _run("bash", "tools/gpu_check.sh", "--dry-run", env={"RESULTS_DIR": str(tmp_path)})
  assert result.returncode == 0, result.stdout + result.stderr
  assert (tmp_path / "summary.txt").is_file()
  for step in ("install", "compare", "sanitizer", "no-cmdbuf", "benchmark"):
    assert step in result.stdout
