"""Multi-scale (FPN) RoIAlign (torchvision.ops.MultiScaleRoIAlign): one
vertical slice. ``config`` (including the level mapping's canonicalisation),
``xla`` (pure JAX, no compiled extension), ``ffi`` (kernel calls and VJP
wiring). Builds on the roi_align slice (its kernels handle FPN levels: see
csrc/roi_align/ and csrc/multi_scale_roi_align/).
"""
