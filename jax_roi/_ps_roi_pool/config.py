"""ps_roi_pool's static configuration."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_roi._core.args import OpConfig


@dataclasses.dataclass(frozen=True)
class PsRoiPoolConfig(OpConfig):
  """Everything static of a ps_roi_pool call (see jax_roi.ps_roi_pool)."""

  @property
  def channel_bins(self) -> int:
    """Input channels per output channel: PH * PW."""
    return self.base.output_size[0] * self.base.output_size[1]

  def attrs(self) -> tuple[tuple[str, object], ...]:
    """The FFI attributes of both ps_roi_pool targets."""
    b = self.base
    return (
      ("spatial_scale", np.float64(b.spatial_scale)),
      ("pooled_height", np.int64(b.output_size[0])),
      ("pooled_width", np.int64(b.output_size[1])),
      ("layout", b.layout),
    )
