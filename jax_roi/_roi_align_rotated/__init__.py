"""Rotated RoIAlign (detectron2's ROIAlignRotated, mmcv's roi_align_rotated):
config, pure-JAX version (xla) and kernels (ffi)."""
