// Fused frozen-mask optimizer steps on the CPU: one pass per parameter reads
// the gradient, the state and the packed frozen bits and writes parameter and
// state in place.  Math: csrc/include/subind/optim_math.h.
#include <ATen/Dispatch.h>
#include <torch/library.h>
#include <ATen/Parallel.h>

#include "subind/optim_math.h"

namespace {

constexpr int64_t kGrain = 32768;

// The per-element lambdas must inline into the SIMD loops or nothing vectorises.
#define SUBIND_ALWAYS_INLINE __attribute__((always_inline))

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

// Calls f(i, frozen) for i in [begin, end).  With a mask, whole bytes are
// walked one at a time and their 8 elements form one SIMD lane group (the
// per-element form bits[i >> 3] >> (i & 7) kept GCC from vectorising: 5x
// slower); the ragged ends of a chunk are done element by element.
template <typename F>
SUBIND_ALWAYS_INLINE inline void for_each_with_frozen_bit(int64_t begin, int64_t end, const uint8_t* bits, F&& f) {
  if (bits == nullptr) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) f(i, false);
    return;
  }
  const int64_t first_byte = (begin + 7) / 8, last_byte = end / 8;
  if (first_byte >= last_byte) {
    for (int64_t i = begin; i < end; ++i) f(i, subind::is_frozen(bits, i));
    return;
  }
  for (int64_t i = begin; i < first_byte * 8; ++i) f(i, subind::is_frozen(bits, i));
  for (int64_t j = first_byte; j < last_byte; ++j) {
    const uint32_t byte = bits[j];
#pragma omp simd
    for (int k = 0; k < 8; ++k) f(j * 8 + k, ((byte >> k) & 1u) != 0);
  }
  for (int64_t i = last_byte * 8; i < end; ++i) f(i, subind::is_frozen(bits, i));
}

template <typename T>
void adamw_loop(T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* bits,
                const subind::AdamWScalars c, int64_t n) {
  at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
    if (vmax != nullptr) {
      for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_ALWAYS_INLINE {
        subind::adamw_element<T>(p[i], g[i], m[i], v[i], vmax + i, c, frozen);
      });
    } else {
      for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_ALWAYS_INLINE {
        subind::adamw_element<T>(p[i], g[i], m[i], v[i], nullptr, c, frozen);
      });
    }
  });
}

template <typename T>
void sgd_loop(T* p, const T* g, T* buf, const uint8_t* bits, const subind::SGDScalars c,
              int64_t n) {
  at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
    if (buf != nullptr) {
      for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_ALWAYS_INLINE {
        subind::sgd_element<T>(p[i], g[i], buf + i, c, frozen);
      });
    } else {
      for_each_with_frozen_bit(begin, end, bits, [=](int64_t i, bool frozen) SUBIND_ALWAYS_INLINE {
        subind::sgd_element<T>(p[i], g[i], nullptr, c, frozen);
      });
    }
  });
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
