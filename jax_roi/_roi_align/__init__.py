"""RoIAlign (torchvision.ops.roi_align, avg and max modes): one vertical
slice. ``config``, ``xla`` (pure JAX, no compiled extension), ``ffi``
(kernel calls and VJP wiring). The kernels are csrc/roi_align/.
"""
