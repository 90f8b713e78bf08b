// CPU kernels of the mask ops: mask_weight and its backward, the masked
// convolutions (the mask pass around ATen's convolution, composed by the
// shared host driver, subind/mask_driver.h) and the L0 penalty Σσ(βs).  The
// element-wise loops are the chosen CPU capability's (loops/cpu_loops.h); the
// fp32 loops vectorise (the exp is a branch-free polynomial, subind/mask_math.h).
#include <torch/library.h>

#include "cpu_kernels.h"

namespace {

using subind_cpu::kGrain;

template <typename T>
double sigmoid_sum_loop(const T* s, T beta, int64_t n) {
  const auto range = std::get<subind_cpu::SigmoidSumFn<T>>(subind_cpu::active_loops().sigmoid_sum);
  return at::parallel_reduce(
      int64_t(0), n, kGrain, 0.0,
      [=](int64_t begin, int64_t end, double acc) { return acc + range(s, beta, begin, end); },
      std::plus<double>());
}

template <typename T>
void sigmoid_slope_loop(const T* s, T beta, T scale, T* out, int64_t n) {
  const auto range =
      std::get<subind_cpu::SigmoidSlopeFn<T>>(subind_cpu::active_loops().sigmoid_slope);
  at::parallel_for(0, n, kGrain,
                   [&](int64_t begin, int64_t end) { range(s, beta, scale, out, begin, end); });
}

// sum(sigmoid(beta * s)), accumulated per chunk then in double: one pass, no
// weight-sized temporary.
at::Tensor sigmoid_sum(const at::Tensor& logits, const at::Tensor& beta_tensor) {
  const double beta = subind_cpu::host_beta("sigmoid_sum", beta_tensor);
  auto s = logits.contiguous();
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "sigmoid_sum", [&] {
    total = sigmoid_sum_loop<scalar_t>(s.data_ptr<scalar_t>(),
                                       static_cast<scalar_t>(beta), s.numel());
  });
  return at::scalar_tensor(total, s.options());
}

// d/ds [grad * sum(sigmoid(beta * s))] = grad * beta * m * (1 - m).
at::Tensor sigmoid_sum_backward(const at::Tensor& grad, const at::Tensor& logits,
                                const at::Tensor& beta_tensor) {
  const double beta = subind_cpu::host_beta("sigmoid_sum_backward", beta_tensor);
  auto s = logits.contiguous();
  auto out = at::empty_like(s);
  const double scale = grad.item<double>() * beta;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "sigmoid_sum_backward", [&] {
    sigmoid_slope_loop<scalar_t>(s.data_ptr<scalar_t>(), static_cast<scalar_t>(beta),
                                 static_cast<scalar_t>(scale),
                                 out.data_ptr<scalar_t>(), s.numel());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(subind, CPU, m) {
  using subind_cpu::CpuKernels;
  m.impl("mask_weight", &subind::mask_weight<CpuKernels>);
  m.impl("mask_weight_backward", &subind::mask_weight_backward<CpuKernels>);
  m.impl("masked_conv", &subind::conv_forward<CpuKernels>);
  m.impl("masked_conv_l0", &subind::conv_forward_l0<CpuKernels>);
  m.impl("masked_conv_backward", &subind::conv_backward<CpuKernels>);
  m.impl("sigmoid_sum", &sigmoid_sum);
  m.impl("sigmoid_sum_backward", &sigmoid_sum_backward);
}
