"""Rotated RoIAlign's static configuration."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_roi._core.args import OpConfig

ANGLE_UNITS = ("degrees", "radians")


@dataclasses.dataclass(frozen=True)
class RotatedConfig(OpConfig):
  """Everything static of a roi_align_rotated call (see jax_roi.roi_align_rotated)."""

  sampling_ratio: int
  aligned: bool
  angle_unit: str
  clockwise: bool

  def attrs(self) -> tuple[tuple[str, object], ...]:
    """The FFI attributes of every roi_align_rotated target."""
    b = self.base
    return (
      ("spatial_scale", np.float64(b.spatial_scale)),
      ("pooled_height", np.int64(b.output_size[0])),
      ("pooled_width", np.int64(b.output_size[1])),
      ("sampling_ratio", np.int64(self.sampling_ratio)),
      ("aligned", bool(self.aligned)),
      ("angle_unit", self.angle_unit),
      ("clockwise", bool(self.clockwise)),
      ("layout", b.layout),
    )
