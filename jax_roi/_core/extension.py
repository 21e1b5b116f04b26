"""The compiled extension: loading, ABI check and FFI target registration.

The only module that imports ``jax_roi._jax_roi``. Importing it registers
every target the extension exports (each op's C++ registry) for ``"cpu"``
and, in CUDA builds, ``"CUDA"``.

An installation without a built extension still imports (with a warning):
the ops then run their pure-JAX versions, and ``implementation="ffi"``
raises. A source checkout without one is an ``ImportError`` saying what to
do (usually: the checkout shadows an installed jax_roi), unless
``JAX_ROI_ALLOW_MISSING_EXTENSION=1``.
An extension built against a newer XLA FFI than the running jaxlib is a
hard error (registering it would take every jax computation down).

A build may carry the CPU kernels more than once (CMake's
``JAX_ROI_CPU_VARIANTS``; the portable wheel does): ``_jax_roi`` for its
baseline instruction set and ``_jax_roi_x86_64_v3`` / ``_jax_roi_x86_64_v4``
for AVX2 and AVX-512. The widest one this CPU runs is registered, unless
``JAX_ROI_CPU_VARIANT`` (``auto``, ``baseline``, ``x86-64-v3``,
``x86-64-v4``) names one. Every variant computes the same bits.
"""

from __future__ import annotations

import importlib
import os
import re
import types
import warnings

import jax

ALLOW_MISSING_ENV = "JAX_ROI_ALLOW_MISSING_EXTENSION"
VARIANT_ENV = "JAX_ROI_CPU_VARIANT"
# The instruction-set levels variant modules are built for, widest first.
VARIANT_LEVELS = ("x86-64-v4", "x86-64-v3")


def variant_module_name(level: str) -> str:
  """The module of the CPU kernels built with -march=``level``."""
  return "jax_roi._jax_roi_" + level.replace("-", "_")


def _import_variant(level: str) -> types.ModuleType | None:
  name = variant_module_name(level)
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:  # this build has no such variant
    if e.name != name:
      raise
    return None


def choose_cpu_module(base: types.ModuleType) -> types.ModuleType:
  """The extension module whose kernels run here: ``base`` (``_jax_roi``) or
  the widest variant module present whose instructions this CPU runs, or
  the one ``JAX_ROI_CPU_VARIANT`` names."""
  wanted = os.environ.get(VARIANT_ENV, "").strip().lower()
  if wanted in ("", "auto"):
    for level in VARIANT_LEVELS:
      if base.cpu_supports(level):
        module = _import_variant(level)
        if module is not None:
          return module
    return base
  if wanted == "baseline":
    return base
  if wanted not in VARIANT_LEVELS:
    raise ImportError(
      f"{VARIANT_ENV}={wanted!r}: expected auto, baseline, " + " or ".join(reversed(VARIANT_LEVELS))
    )
  if not base.cpu_supports(wanted):
    raise ImportError(
      f"{VARIANT_ENV}={wanted}: this CPU does not run {wanted} code (its instructions"
      " would stop the process); unset it to choose automatically"
    )
  module = _import_variant(wanted)
  if module is None:
    raise ImportError(
      f"{VARIANT_ENV}={wanted}: this installation has no {wanted} build of the kernels"
      f" ({variant_module_name(wanted)}); build one with JAX_ROI_CPU_VARIANTS={wanted}"
      " (CPU-only builds), or unset the variable"
    )
  return module


def _source_tree() -> str | None:
  """The checkout this package was imported from, if it is one (a
  pyproject.toml and csrc/ next to the package directory)."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  is_tree = os.path.isfile(os.path.join(root, "pyproject.toml")) and os.path.isdir(
    os.path.join(root, "csrc")
  )
  return root if is_tree else None


def _shadowed_install(tree: str) -> str | None:
  """Another jax_roi on sys.path, which the source tree hides."""
  import importlib.machinery
  import sys

  here = os.path.realpath(tree)
  others = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != here]
  spec = importlib.machinery.PathFinder.find_spec("jax_roi", others)
  if spec is None or not spec.submodule_search_locations:
    return None
  return list(spec.submodule_search_locations)[0]


def missing_extension_error(tree: str) -> str:
  """What to do when ``tree`` (a checkout) has no compiled extension."""
  other = _shadowed_install(tree)
  if other is not None:
    return (
      f"jax_roi was imported from the source tree {tree} (the current directory or"
      f" PYTHONPATH comes first on sys.path), which has no compiled extension"
      f" (jax_roi/_jax_roi*.so); it hides the jax_roi installed in {other}. Run Python"
      f" from another directory, or with `python -P` (which leaves the current directory"
      f" off sys.path), to use the installed one."
    )
  return (
    f"jax_roi was imported from the source tree {tree}, which has no compiled extension"
    f" (jax_roi/_jax_roi*.so). Build and install it with `pip install .` (or `bash"
    f" tools/run_tests.sh`, which does so in a virtual environment .venv-<python version>)"
    f" and import it from outside the source tree (another directory, or `python -P`)."
    f" {ALLOW_MISSING_ENV}=1 imports the pure-JAX versions of the ops instead."
  )


ext: types.ModuleType | None
try:
  ext = importlib.import_module("jax_roi._jax_roi")
except ModuleNotFoundError as e:  # not built
  if e.name != "jax_roi._jax_roi":
    raise
  _tree = _source_tree()
  if _tree is not None and os.environ.get(ALLOW_MISSING_ENV) != "1":
    raise ImportError(missing_extension_error(_tree)) from None
  ext = None
  MISSING_REASON = (
    "jax_roi's compiled kernels (jax_roi._jax_roi) are not built in this installation"
    " (pip install . builds them)"
  )
  warnings.warn(
    MISSING_REASON + "; the ops use their pure-JAX versions.", RuntimeWarning, stacklevel=2
  )
else:
  MISSING_REASON = ""
  ext = choose_cpu_module(ext)

AVAILABLE: bool = ext is not None
WITH_CUDA: bool = bool(ext is not None and ext.with_cuda)
# The -march of the CPU kernels in use ("native", "x86-64-v2", ...; "" for
# the compiler's default; None without kernels).
CPU_ARCH: str | None = ext.cpu_arch if ext is not None else None


def runtime_ffi_api_version() -> tuple[int, int] | None:
  """The XLA FFI API version of the running jaxlib (from its headers)."""
  path = os.path.join(jax.ffi.include_dir(), "xla", "ffi", "api", "c_api.h")
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  major = re.search(r"#define XLA_FFI_API_MAJOR (\d+)", text)
  minor = re.search(r"#define XLA_FFI_API_MINOR (\d+)", text)
  if not (major and minor):
    return None
  return int(major.group(1)), int(minor.group(1))


def built_ffi_api_version() -> tuple[int, int] | None:
  """The XLA FFI API version the extension was compiled against."""
  return tuple(ext.ffi_api_version) if ext is not None else None


def _register(module: types.ModuleType) -> None:
  built = built_ffi_api_version()
  running = runtime_ffi_api_version()
  if built is not None and running is not None and built > running:
    # Registering would fail inside backend initialisation and take every
    # jax computation down with it: refuse early, with the fix.
    raise ImportError(
      f"jax_roi was compiled against XLA FFI API {built[0]}.{built[1]}, newer"
      f" than the running jaxlib {jax.__version__} (API"
      f" {running[0]}.{running[1]}). Rebuild it in this environment:"
      " pip install --no-build-isolation --force-reinstall ."
    )
  for name, capsule in module.cpu_targets().items():
    jax.ffi.register_ffi_target(name, capsule, platform="cpu")
  for name, capsule in module.cuda_targets().items():
    jax.ffi.register_ffi_target(name, capsule, platform="CUDA")


if ext is not None:
  _register(ext)


def target_names() -> tuple[str, ...]:
  """The XLA FFI custom-call targets this build registers."""
  return tuple(sorted(ext.cpu_targets())) if ext is not None else ()


def require() -> None:
  """Raises when the compiled kernels are unavailable (implementation="ffi")."""
  if ext is None:
    raise RuntimeError(MISSING_REASON + "; use implementation=None or 'xla'.")
