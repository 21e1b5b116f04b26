"""Position-sensitive RoIAlign (torchvision.ops.ps_roi_align): one vertical
slice.

``config`` (static configuration), ``xla`` (the pure-JAX version, built on
roi_align's geometry: no compiled extension), ``ffi`` (kernel calls and VJP
wiring). The kernels are csrc/ps_roi/ (shared with ps_roi_pool).
"""
