"""RoIAlign's static configuration."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_roi._core.args import OpConfig

MODES = ("avg", "max")


@dataclasses.dataclass(frozen=True)
class RoiAlignConfig(OpConfig):
  """Everything static of a roi_align call (see jax_roi.roi_align)."""

  sampling_ratio: int
  aligned: bool
  mode: str
  deterministic: bool = False  # the backward's kernel

  def attrs(self) -> tuple[tuple[str, object], ...]:
    """The FFI attributes of every roi_align target."""
    b = self.base
    return (
      ("spatial_scale", np.float64(b.spatial_scale)),
      ("pooled_height", np.int64(b.output_size[0])),
      ("pooled_width", np.int64(b.output_size[1])),
      ("sampling_ratio", np.int64(self.sampling_ratio)),
      ("aligned", bool(self.aligned)),
      ("mode", self.mode),
      ("layout", b.layout),
    )
