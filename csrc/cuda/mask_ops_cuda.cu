// CUDA kernels of the mask ops: the element-wise mask pass, which the shared
// host driver (csrc/include/subind/mask_driver.h) composes into mask_weight,
// its backward and the masked convolutions around cuDNN; masked linear layers
// on CUDA use the fused Triton GEMMs (subind_fast/ops/cuda/triton_launch.py),
// or this pass around cuBLAS for the sampled modes.  Same per-element math as
// the CPU kernels (csrc/include/subind/mask_math.h).
#include <torch/extension.h>
#include <torch/library.h>
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

// One grid-stride pass; beta, the noise key and grad_l0 are read from device
// memory, so nothing waits for the host.  A forward pass with p.l0_sum sums
// the penalty per thread, then per block (warp shuffles, then one warp), and
// adds each block's total to *p.l0_sum atomically.
template <typename weight_t, typename logit_t>
__global__ void mask_pass_kernel(subind::MaskPass<weight_t, logit_t> p,
                                 const logit_t* __restrict__ beta_ptr,
                                 const int64_t* __restrict__ key_ptr, int mode) {
  const logit_t beta = *beta_ptr;
  const uint32_t key = key_ptr ? subind::noise_key_hash(key_ptr[0], key_ptr[1]) : 0u;
  const bool backward_l0 = p.grad_s != nullptr && p.grad_l0 != nullptr;
  const bool forward_l0 = p.grad_s == nullptr && p.l0_sum != nullptr;
  const logit_t grad_l0 = backward_l0 ? *p.grad_l0 : logit_t(0);
  double l0_sum = 0.0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < p.n;
       i += (int64_t)gridDim.x * blockDim.x) {
    logit_t m, slope;
    if (subind::mode_is_sampled(mode)) {
      subind::sampled_mask_and_slope<logit_t>(
          p.s[i], beta, subind::logistic_noise<logit_t>(key, p.offset + i), mode, m, slope);
    } else if (mode == subind::kSoft) {
      subind::sigmoid_and_slope<logit_t>(beta * p.s[i], m, slope);
    } else {
      m = (mode == subind::kHard) ? (p.s[i] > logit_t(0) ? logit_t(1) : logit_t(0)) : logit_t(1);
      slope = logit_t(0);
    }
    logit_t penalty = 0, penalty_slope = 0;
    if (forward_l0 || backward_l0) {
      subind::penalty_and_slope<logit_t>(p.s[i], beta, mode, m, slope, penalty, penalty_slope);
      l0_sum += static_cast<double>(penalty);
    }
    const logit_t ti = static_cast<logit_t>(p.theta[i]);
    if (p.w_eff) p.w_eff[i] = static_cast<weight_t>(ti * m);
    if (p.g) {
      const logit_t gi = static_cast<logit_t>(p.g[i]);
      if (p.grad_s) p.grad_s[i] = gi * ti * beta * slope + grad_l0 * penalty_slope;
      if (p.grad_theta) p.grad_theta[i] = static_cast<weight_t>(gi * m);
    }
  }
  if (!forward_l0) return;
  __shared__ double warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    l0_sum += __shfl_down_sync(0xffffffffu, l0_sum, offset);
  }
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = l0_sum;
  __syncthreads();
  if (threadIdx.x < 32) {
    l0_sum = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.0;
    for (int offset = 16; offset > 0; offset /= 2) {
      l0_sum += __shfl_down_sync(0xffffffffu, l0_sum, offset);
    }
    if (threadIdx.x == 0) atomicAdd(p.l0_sum, l0_sum);
  }
}

struct CudaKernels {
  template <typename weight_t, typename logit_t>
  static void pass(const subind::MaskPass<weight_t, logit_t>& p, const subind::MaskArgs& args) {
    // The driver has made the operands' device current (run_mask_pass).  beta
    // in the logits' dtype on it; a CPU scalar is copied without a sync.
    constexpr at::ScalarType kLogitType = c10::CppTypeToScalarType<logit_t>::value;
    const at::Tensor beta = args.beta.reshape({}).to(
        c10::Device(c10::kCUDA, c10::cuda::current_device()), kLogitType,
        /*non_blocking=*/true);
    const logit_t* beta_ptr = static_cast<const logit_t*>(beta.const_data_ptr());
    mask_pass_kernel<weight_t, logit_t>
        <<<blocks_for(p.n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            p, beta_ptr,
            args.key.defined() ? args.key.data_ptr<int64_t>() : nullptr, args.mode);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The caching allocator makes a fresh W_eff cheap and stream-ordered.
  static at::Tensor transient_like(const at::Tensor& dense) { return at::empty_like(dense); }
};

}  // namespace

// masked_linear on CUDA is registered from Python (the Triton GEMMs); the
// ops below are this extension's.
TORCH_LIBRARY_IMPL(subind, CUDA, m) {
  m.impl("mask_weight", &subind::mask_weight<CudaKernels>);
  m.impl("mask_weight_backward", &subind::mask_weight_backward<CudaKernels>);
  m.impl("masked_conv", &subind::conv_forward<CudaKernels>);
  m.impl("masked_conv_l0", &subind::conv_forward_l0<CudaKernels>);
  m.impl("masked_conv_backward", &subind::conv_backward<CudaKernels>);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast CUDA kernels: registers the CUDA kernels of torch.ops.subind";
}
