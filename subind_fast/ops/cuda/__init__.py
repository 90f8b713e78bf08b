"""The op layer on CUDA: the Triton kernels (triton_kernels.py), their
launchers (triton_launch.py), and the Python CUDA kernels of the ops
(kernels.py), registered by ops/library.py."""
