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

// Hard-concrete / Gumbel straight-through samples: the noise of element i is
// regenerated from the key [seed, stream] read from device memory.
template <typename weight_t, typename logit_t>
__global__ void sampled_kernel(const weight_t* __restrict__ g,
                               const weight_t* __restrict__ theta,
                               const logit_t* __restrict__ s,
                               const logit_t* __restrict__ beta_ptr,
                               const int64_t* __restrict__ key_ptr, int mode,
                               logit_t* __restrict__ grad_s,
                               weight_t* __restrict__ grad_theta,
                               weight_t* __restrict__ w_eff, int64_t n) {
  const logit_t beta = *beta_ptr;
  const uint32_t key = subind::noise_key_hash(key_ptr[0], key_ptr[1]);
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    logit_t m, slope;
    subind::sampled_mask_and_slope<logit_t>(s[i], beta, subind::logistic_noise<logit_t>(key, i),
                                            mode, m, slope);
    const logit_t ti = static_cast<logit_t>(theta[i]);
    if (w_eff) w_eff[i] = static_cast<weight_t>(ti * m);
    if (g) {
      const logit_t gi = static_cast<logit_t>(g[i]);
      if (grad_s) grad_s[i] = gi * ti * beta * slope;
      if (grad_theta) grad_theta[i] = static_cast<weight_t>(gi * m);
    }
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

// (w_eff, dtheta, ds) of a sampled mask; g undefined: w_eff only (forward).
std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_pass_cuda(
    const char* op, const at::Tensor* grad_weff, const at::Tensor& weight,
    const at::Tensor& logits, const at::Tensor& beta, const at::Tensor& noise, int64_t mode,
    bool need_weff, bool need_weight_grad, bool need_logits_grad) {
  subind::check_pair(op, weight, logits);
  TORCH_CHECK(weight.is_cuda(), op, ": weight must be a CUDA tensor");
  TORCH_CHECK(subind::sampled_mode_is_valid(mode), op, ": mode ", mode, " is not sampled");
  TORCH_CHECK(noise.scalar_type() == at::kLong && noise.numel() == 2, op,
              ": noise must be an int64 tensor [seed, stream]");
  const c10::cuda::CUDAGuard guard(weight.device());
  at::Tensor theta, s;
  std::tie(theta, s) = subind::flat_operands(weight, logits);
  const auto beta_t = subind::beta_like_logits(op, beta, s);
  const auto key = noise.to(s.device(), /*non_blocking=*/true).contiguous();
  at::Tensor g;
  if (grad_weff) {
    TORCH_CHECK(grad_weff->sizes() == weight.sizes(), op, ": grad shape ", grad_weff->sizes(),
                " != weight shape ", weight.sizes());
    g = subind::with_layout_of(grad_weff->to(theta.scalar_type()), theta);
  } else {
    need_weight_grad = need_logits_grad = false;
  }
  auto w_eff = need_weff ? at::empty_like(theta) : subind::empty_marker(theta);
  auto grad_w = need_weight_grad ? at::empty_like(theta) : subind::empty_marker(theta);
  auto grad_s = need_logits_grad ? at::empty_like(s) : subind::empty_marker(s);
  const int64_t n = theta.numel();
  if (n > 0) {
    SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "sampled_mask_weight", [&] {
      sampled_kernel<weight_t, logit_t>
          <<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              grad_weff ? g.data_ptr<weight_t>() : nullptr, theta.data_ptr<weight_t>(),
              s.data_ptr<logit_t>(), beta_t.data_ptr<logit_t>(), key.data_ptr<int64_t>(),
              static_cast<int>(mode), need_logits_grad ? grad_s.data_ptr<logit_t>() : nullptr,
              need_weight_grad ? grad_w.data_ptr<weight_t>() : nullptr,
              need_weff ? w_eff.data_ptr<weight_t>() : nullptr, n);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {w_eff, grad_w, grad_s};
}

at::Tensor sampled_mask_weight_cuda(const at::Tensor& weight, const at::Tensor& logits,
                                    const at::Tensor& beta, const at::Tensor& noise,
                                    int64_t mode) {
  return std::get<0>(sampled_pass_cuda("sampled_mask_weight", nullptr, weight, logits, beta,
                                       noise, mode, true, false, false));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_mask_weight_backward_cuda(
    const at::Tensor& grad_weff, const at::Tensor& weight, const at::Tensor& logits,
    const at::Tensor& beta, const at::Tensor& noise, int64_t mode, bool need_weff,
    bool need_weight_grad, bool need_logits_grad) {
  return sampled_pass_cuda("sampled_mask_weight_backward", &grad_weff, weight, logits, beta,
                           noise, mode, need_weff, need_weight_grad, need_logits_grad);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast CUDA kernels: element-wise continuous-sparsification passes";
  m.def("mask_weight", &mask_weight_cuda, "w_eff = theta * mask(s)");
  m.def("mask_weight_backward", &mask_weight_backward_cuda,
        "(w_eff, dtheta, ds) from dL/dw_eff");
  m.def("sampled_mask_weight", &sampled_mask_weight_cuda,
        "w_eff = theta * m(s, noise), m a hard-concrete or Gumbel straight-through sample");
  m.def("sampled_mask_weight_backward", &sampled_mask_weight_backward_cuda,
        "(w_eff, dtheta, ds) of a sampled mask, the noise regenerated");
}
