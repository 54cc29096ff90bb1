"""The chunk scheduler (docs/design.md, section 14, "The chunk scheduler"): which edge serves each pending
request, with backups, planned over struct-of-arrays state on NumPy or, where a GPU is, CUDA kernels."""
