"""Every Python code block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a later block may use
what an earlier one defined), as a reader would paste them."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_documents_are_found():
  assert (ROOT / "README.md") in DOCS and len(DOCS) >= 2
  assert BLOCK.findall((ROOT / "README.md").read_text())


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path):
  namespace: dict = {"__name__": f"doc_{path.stem}"}
  for i, block in enumerate(BLOCK.findall(path.read_text())):
    try:
      exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)
    except Exception as e:
      raise AssertionError(f"{path.name}, Python block {i + 1} failed:\n{block}") from e


@pytest.mark.parametrize("marker", ["roi_nn.RoIAlign(", "jax_roi.check_rois("])
def test_the_readme_layer_and_check_examples_run_alone(marker):
  """Pasted on their own (a reader's first try), without the blocks before."""
  blocks = [b for b in BLOCK.findall((ROOT / "README.md").read_text()) if marker in b]
  assert len(blocks) == 1
  exec(compile(blocks[0], "README block", "exec"), {"__name__": "doc_alone"})


def test_the_readme_prerequisites_match_the_build():
  readme = (ROOT / "README.md").read_text()
  cmake_min = re.search(r"cmake_minimum_required\(VERSION (\d+\.\d+)",
                        (ROOT / "CMakeLists.txt").read_text()).group(1)
  python_min = re.search(r'requires-python = ">=(\d+\.\d+)"',
                         (ROOT / "pyproject.toml").read_text()).group(1)
  prerequisites = readme[readme.index("**Prerequisites:**"):][:600]
  assert f"CMake >= {cmake_min}" in prerequisites
  assert f"Python >= {python_min}" in prerequisites
  assert "C++17 compiler" in prerequisites and "nvcc" in prerequisites
