"""Position-sensitive RoIPool (torchvision.ops.ps_roi_pool, R-FCN): one
vertical slice.

``config`` (static configuration), ``xla`` (the pure-JAX version: no
compiled extension), ``ffi`` (kernel calls and VJP wiring). The kernels are
csrc/ps_roi/ (shared with ps_roi_align).
"""
