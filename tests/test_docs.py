"""Every Python code block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a later block may use
what an earlier one defined), as a reader would paste them. A block whose
first line is ``# requires: gpu`` needs a GPU backend: without one it is
left out of test_python_blocks_run, and test_gpu_python_blocks_run (marked
``gpu``, skipped without a GPU) runs the file's blocks with it.

The documentation site (docs/conf.py) includes README sections into its
pages with MyST's include directive; those blocks run here as README's."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
GPU_MARK = "# requires: gpu\n"


def blocks(path: pathlib.Path) -> list[str]:
  return BLOCK.findall(path.read_text())


def run_blocks(path: pathlib.Path, with_gpu: bool) -> int:
  namespace: dict = {"__name__": f"doc_{path.stem}"}
  ran = 0
  for i, block in enumerate(blocks(path)):
    if block.startswith(GPU_MARK) and not with_gpu:
      continue
    try:
      exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)
    except Exception as e:
      raise AssertionError(f"{path.name}, Python block {i + 1} failed:\n{block}") from e
    ran += 1
  return ran


def test_the_documents_are_found():
  assert (ROOT / "README.md") in DOCS and len(DOCS) >= 2
  assert blocks(ROOT / "README.md")
  # The site's pages with code of their own are among them.
  assert {"flax.md", "no_kernel.md", "gpu.md"} <= {p.name for p in DOCS}
  assert blocks(ROOT / "docs" / "flax.md") and blocks(ROOT / "docs" / "no_kernel.md")


def test_the_gpu_mark_is_recognised():
  gpu_blocks = [b for b in blocks(ROOT / "docs" / "gpu.md") if b.startswith(GPU_MARK)]
  assert gpu_blocks and all('jax.devices("gpu")' in b for b in gpu_blocks)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(path):
  run_blocks(path, with_gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize(
  "path", [p for p in DOCS if any(b.startswith(GPU_MARK) for b in blocks(p))], ids=lambda p: p.name
)
def test_gpu_python_blocks_run(path):
  assert run_blocks(path, with_gpu=True) == len(blocks(path))


@pytest.mark.parametrize("marker", ["roi_nn.RoIAlign(", "jax_roi.check_rois("])
def test_the_readme_layer_and_check_examples_run_alone(marker):
  """Pasted on their own (a reader's first try), without the blocks before."""
  found = [b for b in blocks(ROOT / "README.md") if marker in b]
  assert len(found) == 1
  exec(compile(found[0], "README block", "exec"), {"__name__": "doc_alone"})


def test_the_readme_prerequisites_match_the_build():
  readme = (ROOT / "README.md").read_text()
  cmake_min = re.search(
    r"cmake_minimum_required\(VERSION (\d+\.\d+)", (ROOT / "CMakeLists.txt").read_text()
  ).group(1)
  python_min = re.search(
    r'requires-python = ">=(\d+\.\d+)"', (ROOT / "pyproject.toml").read_text()
  ).group(1)
  prerequisites = readme[readme.index("**Prerequisites:**") :][:600]
  assert f"CMake >= {cmake_min}" in prerequisites
  assert f"Python >= {python_min}" in prerequisites
  assert "C++17 compiler" in prerequisites and "nvcc" in prerequisites
