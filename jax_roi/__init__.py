"""jax_roi: RoI pooling operators (RoIPool, RoIAlign) for JAX.

C++ and CUDA kernels registered as XLA FFI custom calls, with torchvision's
exact semantics, differentiable, and batched by ``jax.vmap`` in one launch.
"""

from jax_roi._version import __version__
from jax_roi.ops import multi_scale_roi_align, roi_align, roi_pool

__all__ = ["__version__", "multi_scale_roi_align", "roi_align", "roi_pool"]
