// CUDA kernels for continuous-sparsification masks on weights (used for
// convolutions, whose GEMM is cuDNN's, and by any CUDA caller of
// subind::mask_weight).  Same per-element math as the CPU kernels
// (csrc/include/subind/mask_math.h), same host driver
// (csrc/include/subind/mask_driver.h): only the loops live here.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "subind/mask_driver.h"

namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t n) {
  const int64_t max_blocks = 65535LL * 8;
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < max_blocks ? blocks : max_blocks);
}

template <typename weight_t, typename logit_t>
__global__ void mask_weight_kernel(const weight_t* __restrict__ theta,
                                   const logit_t* __restrict__ s,
                                   weight_t* __restrict__ out,
                                   const logit_t* __restrict__ beta_ptr,
                                   int mode, int64_t n) {
  const logit_t beta = *beta_ptr;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const logit_t m = subind::mask_value<logit_t>(s[i], beta, mode);
    out[i] = static_cast<weight_t>(static_cast<logit_t>(theta[i]) * m);
  }
}

template <typename weight_t, typename logit_t>
__global__ void mask_backward_kernel(const weight_t* __restrict__ g,
                                     const weight_t* __restrict__ theta,
                                     const logit_t* __restrict__ s,
                                     const logit_t* __restrict__ beta_ptr, int mode,
                                     logit_t* __restrict__ grad_s,
                                     weight_t* __restrict__ grad_theta,
                                     weight_t* __restrict__ w_eff, int64_t n) {
  const logit_t beta = *beta_ptr;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    logit_t gs, gt, we;
    subind::mask_backward_element<logit_t>(static_cast<logit_t>(g[i]),
                                           static_cast<logit_t>(theta[i]),
                                           s[i], beta, mode, gs, gt, we);
    if (grad_s) grad_s[i] = gs;
    if (grad_theta) grad_theta[i] = static_cast<weight_t>(gt);
    if (w_eff) w_eff[i] = static_cast<weight_t>(we);
  }
}

struct CudaKernels {
  // The kernels read beta from device memory: no host round trip.
  template <typename logit_t>
  static const logit_t* beta_arg(const at::Tensor& beta) {
    return beta.data_ptr<logit_t>();
  }

  template <typename weight_t, typename logit_t>
  static void forward(const weight_t* theta, const logit_t* s, weight_t* out,
                      const logit_t* beta, int mode, int64_t n) {
    auto stream = at::cuda::getCurrentCUDAStream();
    mask_weight_kernel<weight_t, logit_t>
        <<<blocks_for(n), kThreads, 0, stream>>>(theta, s, out, beta, mode, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename weight_t, typename logit_t>
  static void backward(const weight_t* g, const weight_t* theta,
                       const logit_t* s, const logit_t* beta, int mode,
                       logit_t* grad_s, weight_t* grad_theta, weight_t* w_eff,
                       int64_t n) {
    auto stream = at::cuda::getCurrentCUDAStream();
    mask_backward_kernel<weight_t, logit_t><<<blocks_for(n), kThreads, 0, stream>>>(
        g, theta, s, beta, mode, grad_s, grad_theta, w_eff, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

at::Tensor mask_weight_cuda(const at::Tensor& weight, const at::Tensor& logits,
                            const at::Tensor& beta, int64_t mode) {
  TORCH_CHECK(weight.is_cuda(), "mask_weight (CUDA): weight must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(weight.device());
  return subind::mask_weight<CudaKernels>(weight, logits, beta, mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_weight_backward_cuda(
    const at::Tensor& grad_weff, const at::Tensor& weight,
    const at::Tensor& logits, const at::Tensor& beta, int64_t mode, bool need_weff,
    bool need_weight_grad, bool need_logits_grad) {
  TORCH_CHECK(weight.is_cuda(),
              "mask_weight_backward (CUDA): weight must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(weight.device());
  return subind::mask_weight_backward<CudaKernels>(
      grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
      need_logits_grad);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast CUDA kernels: element-wise continuous-sparsification passes";
  m.def("mask_weight", &mask_weight_cuda, "w_eff = theta * mask(s)");
  m.def("mask_weight_backward", &mask_weight_backward_cuda,
        "(w_eff, dtheta, ds) from dL/dw_eff");
}
