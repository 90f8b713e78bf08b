"""Backends: reference (pure PyTorch, any device), cpu and cuda (compiled
element-wise kernels around ATen GEMMs), triton (fused masked GEMMs on CUDA).
Chosen per device and op family in subind_fast/dispatch.py only."""
