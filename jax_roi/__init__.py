"""jax_roi: RoI pooling operators (RoIPool, RoIAlign, multi-scale RoIAlign) for JAX.

C++ and CUDA kernels registered as XLA FFI custom calls, with torchvision's
exact semantics, differentiable, and batched by ``jax.vmap`` in one launch.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
from typing import TYPE_CHECKING

from jax_roi.ops import (
  multi_scale_roi_align,
  prroi_pool,
  ps_roi_align,
  ps_roi_pool,
  roi_align,
  roi_align_rotated,
  roi_pool,
)
from jax_roi.validate import check_rois, validate_rois, validate_rotated_rois

if TYPE_CHECKING:
  import jax


def _version() -> str:
  """The installed distribution's version (package metadata); in a source
  tree (this package is not the installed one), jax_roi/_version.py."""
  try:
    dist = importlib.metadata.distribution("jax-roi")
    if pathlib.Path(str(dist.locate_file("jax_roi/__init__.py"))).resolve() == (
      pathlib.Path(__file__).resolve()
    ):
      return dist.version
  except importlib.metadata.PackageNotFoundError:
    pass
  from jax_roi._version import __version__ as source_version

  return source_version


__version__ = _version()


def export_safety_checks() -> list[jax.export.DisabledSafetyCheck]:
  """The ``disabled_checks`` that ``jax.export.export`` needs for jax_roi.

  ``jax.export`` refuses custom calls it cannot vouch for; jax_roi's targets
  are versioned (``jax_roi_roi_align_fwd_v1``): a target's operands,
  results and attributes never change under the same name, and a release
  that changes them adds a ``_v2`` target while still registering ``_v1``.
  Usage::

    exported = jax.export.export(jax.jit(f), platforms=("cpu", "cuda"),
                                 disabled_checks=jax_roi.export_safety_checks())(x)

  The process that deserializes and runs the artifact must ``import jax_roi``
  (which registers the targets) with a jax_roi that still provides them.
  """
  import jax

  from jax_roi._core import extension

  return [jax.export.DisabledSafetyCheck.custom_call(name) for name in extension.target_names()]


__all__ = [
  "__version__",
  "check_rois",
  "export_safety_checks",
  "multi_scale_roi_align",
  "ps_roi_align",
  "ps_roi_pool",
  "roi_align",
  "roi_pool",
  "validate_rois",
]
__all__ += ["roi_align_rotated", "validate_rotated_rois"]
__all__ += ["prroi_pool"]
