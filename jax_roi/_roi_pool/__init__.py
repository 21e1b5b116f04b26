"""RoIPool (torchvision.ops.roi_pool): one vertical slice.

``config`` (static configuration), ``xla`` (the pure-JAX version: no
compiled extension), ``ffi`` (kernel calls and VJP wiring). The kernels are
csrc/roi_pool/.
"""
