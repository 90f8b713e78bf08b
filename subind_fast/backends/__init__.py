"""The kernels written in Python: triton (fused masked GEMMs and element-wise
kernels for CUDA tensors), cuda_registration (which registers them, and the
composition of the mask ops with cuBLAS/cuDNN, as the CUDA kernels of the
``torch.ops.subind`` schemas), and reference (each op in PyTorch ops, a
second opinion in the tests and the sampled masks on CUDA without the CUDA
extension).  The C++ kernels live in csrc/."""
