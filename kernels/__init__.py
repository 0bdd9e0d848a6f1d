"""diagnose.kernels: fused per-token reductions (see kernels/ at the repo top level)."""
