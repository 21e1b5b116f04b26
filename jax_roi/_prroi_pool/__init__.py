"""Precise RoI Pooling (IoU-Net's PrRoIPool, mmcv's prroi_pool): config,
pure-JAX version (xla) and kernels (ffi)."""
