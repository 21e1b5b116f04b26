"""The package's layout: imports flow one way (public -> per-op -> core),
with no cycle, and the pure-JAX versions load without the compiled
extension (docs/architecture.md)."""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

import jax_roi

PACKAGE = pathlib.Path(jax_roi.__file__).parent
# Every private subpackage but the core is an op slice.
OP_SLICES = tuple(
  sorted(p.parent.name for p in PACKAGE.glob("_*/__init__.py") if p.parent.name != "_core")
)
# Modules that must never load the compiled extension, even indirectly.
EXTENSION_FREE = [
  "jax_roi._core.args",
  "jax_roi._core.layout",
  "jax_roi._core.jnp_utils",
  "jax_roi._core.spec",
  "jax_roi._core.batching",
  "jax_roi._core.sharding",
] + [f"jax_roi.{s}.{m}" for s in OP_SLICES for m in ("config", "xla")]
EXTENSION = {"jax_roi._jax_roi", "jax_roi._core.extension"}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
  """Every jax_roi module `name` imports, at module level or inside
  functions (a function-level import can still close a cycle)."""
  tree = ast.parse(MODULES[name].read_text())
  package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
          package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
        )
      targets = [
        f"{base}.{a.name}"
        if f"{base}.{a.name}" in MODULES or f"{base}.{a.name}" == "jax_roi._jax_roi"
        else base
        for a in node.names
      ]
    else:
      continue
    found.update(t for t in targets if t.startswith("jax_roi"))
  found.discard(name)
  return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
  """0: the core; 1: an op slice; 2: the public modules."""
  if name.startswith("jax_roi._core") or name in ("jax_roi._jax_roi", "jax_roi._version"):
    return 0
  if any(name.startswith(f"jax_roi.{s}") for s in OP_SLICES):
    return 1
  return 2


def test_the_graph_covers_every_module():
  assert set(OP_SLICES) >= {"_roi_pool", "_roi_align", "_multi_scale"}
  assert {"jax_roi.ops", "jax_roi._core.kernel", "jax_roi._roi_align.xla"} <= set(GRAPH)
  assert "jax_roi._core.extension" in GRAPH["jax_roi._core.kernel"]  # the parser sees imports


def test_imports_flow_one_way():
  wrong = [
    (a, b) for a, deps in GRAPH.items() for b in deps if b != "jax_roi" and _layer(b) > _layer(a)
  ]
  assert not wrong, f"imports against the layering (public -> per-op -> core): {wrong}"
  # The package itself (jax_roi/__init__.py) is imported by no module.
  assert not [a for a, deps in GRAPH.items() if "jax_roi" in deps]


def test_no_import_cycle():
  state: dict[str, int] = {}

  def visit(name, path):
    if state.get(name) == 1:
      pytest.fail("import cycle: " + " -> ".join(path + [name]))
    if state.get(name) == 2:
      return
    state[name] = 1
    for dep in sorted(GRAPH.get(name, ())):
      visit(dep, path + [name])
    state[name] = 2

  for name in sorted(GRAPH):
    visit(name, [])


def _closure(name: str) -> set[str]:
  seen, todo = set(), [name]
  while todo:
    for dep in GRAPH.get(todo.pop(), ()):
      if dep not in seen:
        seen.add(dep)
        todo.append(dep)
  return seen


@pytest.mark.parametrize("name", EXTENSION_FREE)
def test_pure_jax_modules_never_reach_the_extension(name):
  assert name in GRAPH
  assert not _closure(name) & EXTENSION


def _run(code: str) -> subprocess.CompletedProcess:
  # -P: import the jax_roi under test, not a source tree on the cwd.
  return subprocess.run(
    [sys.executable, "-P", "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=PACKAGE.parent.parent,
  )


def test_every_module_imports_in_a_fresh_interpreter():
  """Leaves first would hide nothing; the reverse (most dependent first,
  then each dependency) is the order in which a cycle through a module-level
  import fails."""
  order = sorted(MODULES, key=lambda m: (-_layer(m), m))
  result = _run(f"""
      import importlib, sys
      sys.path.insert(0, {str(PACKAGE.parent)!r})
      for name in {order!r}:
        importlib.import_module(name)
      print("ok", len({order!r}))
      """)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("ok")


def test_pure_jax_versions_work_without_the_extension():
  """(The package's __init__ still tries the extension, tolerating its
  absence; that the pure-JAX modules themselves never import it is
  test_pure_jax_modules_never_reach_the_extension.)"""
  result = _run(f"""
      import importlib.abc, os, sys, warnings
      sys.path.insert(0, {str(PACKAGE.parent)!r})
      os.environ["JAX_ROI_ALLOW_MISSING_EXTENSION"] = "1"  # a source tree without a build

      class Block(importlib.abc.MetaPathFinder):  # the extension is not built
        def find_spec(self, name, path=None, target=None):
          if name == "jax_roi._jax_roi":
            raise ModuleNotFoundError("No module named 'jax_roi._jax_roi'", name=name)

      sys.meta_path.insert(0, Block())
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in {EXTENSION_FREE!r}:
          importlib.import_module(name)
        import jax_roi
      assert any("not built" in str(w.message) for w in caught), caught
      import jax.numpy as jnp, numpy as np
      f = jnp.asarray(np.random.default_rng(0).standard_normal((1, 2, 8, 8)), jnp.float32)
      r = jnp.array([[0, 1.0, 1.0, 6.0, 5.0]])
      out = jax_roi.roi_align(f, r, 3, sampling_ratio=2)
      np.testing.assert_array_equal(out, jax_roi.roi_align(f, r, 3, sampling_ratio=2,
                                                           implementation="xla"))
      try:
        jax_roi.roi_pool(f, r, 2, implementation="ffi")
      except RuntimeError as e:
        assert "not built" in str(e), e
      else:
        raise AssertionError("implementation='ffi' ran without kernels")
      assert "jax_roi._jax_roi" not in sys.modules
      print("ok")
      """)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "ok"


def test_every_target_the_ops_call_is_registered():
  from jax_roi._core import extension
  from jax_roi._multi_scale import ffi as multi_scale_ffi
  from jax_roi._prroi_pool import ffi as prroi_pool_ffi
  from jax_roi._ps_roi_align import ffi as ps_roi_align_ffi
  from jax_roi._ps_roi_pool import ffi as ps_roi_pool_ffi
  from jax_roi._roi_align import ffi as roi_align_ffi
  from jax_roi._roi_align_rotated import ffi as roi_align_rotated_ffi
  from jax_roi._roi_pool import ffi as roi_pool_ffi

  modules = (roi_pool_ffi, roi_align_ffi, multi_scale_ffi, ps_roi_pool_ffi, ps_roi_align_ffi)
  modules += (roi_align_rotated_ffi, prroi_pool_ffi)
  called = {
    getattr(m, t)
    for m in modules
    for t in ("FORWARD", "BACKWARD", "BACKWARD_DETERMINISTIC", "BACKWARD_FROM_FEATURES", "BOX_GRAD")
    if hasattr(m, t)
  }
  # ..., roi_align_rotated, prroi_pool, deterministic, roi_pool's from features
  assert len(called) == 8 + 5 + 3 + 3 + 3 + 1
  assert called == set(extension.target_names())


def _tree_without_build(root: pathlib.Path) -> pathlib.Path:
  """A copy of the package as in a fresh clone: no compiled extension."""
  tree = root / "clone"
  shutil.copytree(
    PACKAGE, tree / "jax_roi", ignore=shutil.ignore_patterns("_jax_roi*", "__pycache__")
  )
  (tree / "csrc").mkdir()
  (tree / "pyproject.toml").write_text("[project]\nname = 'jax_roi'\n")
  return tree


def test_a_clone_without_a_build_says_it_shadows_the_install(tmp_path):
  """`python -c "import jax_roi"` in a fresh clone's root: the clone comes
  first on sys.path and hides the installed jax_roi; the error says so and
  what to do, instead of failing somewhere inside the package."""
  tree = _tree_without_build(tmp_path)
  installed = tmp_path / "site"
  shutil.copytree(PACKAGE, installed / "jax_roi", ignore=shutil.ignore_patterns("__pycache__"))
  result = subprocess.run(
    [sys.executable, "-c", "import jax_roi"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tree,
    env={**os.environ, "PYTHONPATH": str(installed)},
  )
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("ImportError: jax_roi was imported from the source tree"), last
  assert f"hides the jax_roi installed in {installed / 'jax_roi'}" in last, last
  assert "python -P" in last and "circular" not in result.stderr
  # What `python -P` does: the installed copy is imported.
  result = subprocess.run(
    [sys.executable, "-P", "-c", "import jax_roi; print(jax_roi.__file__)"],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tree,
    env={**os.environ, "PYTHONPATH": str(installed)},
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == str(installed / "jax_roi" / "__init__.py")


def test_a_clone_without_a_build_and_nothing_installed_says_how_to_build(tmp_path, monkeypatch):
  from jax_roi._core import extension

  tree = _tree_without_build(tmp_path)
  monkeypatch.setattr(sys, "path", [str(tree)])
  message = extension.missing_extension_error(str(tree))
  assert message.startswith(f"jax_roi was imported from the source tree {tree}, which has no")
  assert "pip install ." in message and "JAX_ROI_ALLOW_MISSING_EXTENSION=1" in message
