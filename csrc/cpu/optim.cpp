// Fused frozen-mask optimizer steps on the CPU: one pass per parameter reads
// the gradient, the state and the packed frozen bits and writes parameter and
// state in place.  Math: csrc/include/subind/optim_math.h; the loops are the
// chosen CPU capability's (loops/cpu_loops.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include "loops/cpu_loops.h"

namespace {

constexpr int64_t kGrain = 32768;

void check_same(const char* op, const at::Tensor& param, const at::Tensor& other,
                const char* name) {
  TORCH_CHECK(other.is_contiguous() && other.sizes() == param.sizes() &&
                  other.scalar_type() == param.scalar_type() &&
                  other.device() == param.device(),
              op, ": ", name, " must be a contiguous tensor shaped and typed like the parameter (",
              param.sizes(), ", ", param.scalar_type(), ")");
}

const uint8_t* frozen_ptr(const char* op, const at::Tensor& param, const at::Tensor& bits) {
  if (bits.numel() == 0) return nullptr;
  TORCH_CHECK(bits.scalar_type() == at::kByte && bits.is_contiguous() &&
                  bits.numel() == (param.numel() + 7) / 8,
              op, ": frozen bits must be a contiguous uint8 tensor of ", (param.numel() + 7) / 8,
              " bytes, got ", bits.numel());
  return bits.data_ptr<uint8_t>();
}

template <typename T>
void adamw_loop(T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* bits,
                const subind::AdamWScalars c, int64_t n) {
  const auto range = std::get<subind_cpu::AdamWRangeFn<T>>(subind_cpu::active_loops().adamw);
  at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
    range(p, g, m, v, vmax, bits, c, begin, end);
  });
}

template <typename T>
void sgd_loop(T* p, const T* g, T* buf, const uint8_t* bits, const subind::SGDScalars c,
              int64_t n) {
  const auto range = std::get<subind_cpu::SgdRangeFn<T>>(subind_cpu::active_loops().sgd);
  at::parallel_for(0, n, kGrain,
                   [=](int64_t begin, int64_t end) { range(p, g, buf, bits, c, begin, end); });
}

void adamw_step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, const at::Tensor& max_exp_avg_sq, const at::Tensor& frozen_bits,
                double lr, double beta1, double beta2, double eps, double weight_decay,
                double step_size, double inv_sqrt_bias2) {
  const char* op = "subind::adamw_step";
  TORCH_CHECK(param.is_contiguous(), op, ": the parameter must be contiguous");
  check_same(op, param, grad, "grad");
  check_same(op, param, exp_avg, "exp_avg");
  check_same(op, param, exp_avg_sq, "exp_avg_sq");
  const bool amsgrad = max_exp_avg_sq.numel() > 0;
  if (amsgrad) check_same(op, param, max_exp_avg_sq, "max_exp_avg_sq");
  const uint8_t* bits = frozen_ptr(op, param, frozen_bits);
  const subind::AdamWScalars c{float(lr), float(beta1), float(beta2), float(eps),
                               float(weight_decay), float(step_size), float(inv_sqrt_bias2)};
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "subind::adamw_step", [&] {
    adamw_loop<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                         exp_avg.data_ptr<scalar_t>(), exp_avg_sq.data_ptr<scalar_t>(),
                         amsgrad ? max_exp_avg_sq.data_ptr<scalar_t>() : nullptr, bits, c,
                         param.numel());
  });
}

void sgd_step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& momentum_buffer,
              const at::Tensor& frozen_bits, double lr, double momentum, double dampening,
              double weight_decay, bool nesterov, bool first_step) {
  const char* op = "subind::sgd_step";
  TORCH_CHECK(param.is_contiguous(), op, ": the parameter must be contiguous");
  check_same(op, param, grad, "grad");
  const bool has_buf = momentum_buffer.numel() > 0;
  if (has_buf) check_same(op, param, momentum_buffer, "momentum_buffer");
  const uint8_t* bits = frozen_ptr(op, param, frozen_bits);
  const subind::SGDScalars c{float(lr), float(momentum), float(dampening), float(weight_decay),
                             nesterov, first_step};
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "subind::sgd_step", [&] {
    sgd_loop<scalar_t>(param.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                       has_buf ? momentum_buffer.data_ptr<scalar_t>() : nullptr, bits, c,
                       param.numel());
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(subind, CPU, m) {
  m.impl("adamw_step", &adamw_step);
  m.impl("sgd_step", &sgd_step);
}
