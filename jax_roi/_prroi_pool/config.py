"""prroi_pool's static configuration."""

from __future__ import annotations

import dataclasses

import numpy as np

from jax_roi._core.args import OpConfig


@dataclasses.dataclass(frozen=True)
class PrRoiPoolConfig(OpConfig):
  """Everything static of a prroi_pool call (see jax_roi.prroi_pool)."""

  def attrs(self) -> tuple[tuple[str, object], ...]:
    """The FFI attributes of every prroi_pool target."""
    b = self.base
    return (
      ("spatial_scale", np.float64(b.spatial_scale)),
      ("pooled_height", np.int64(b.output_size[0])),
      ("pooled_width", np.int64(b.output_size[1])),
      ("layout", b.layout),
    )
