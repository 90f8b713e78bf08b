// CPU kernels for continuous-sparsification masks.  Math: see
// csrc/include/subind/mask_math.h; layout, checks and dtype dispatch:
// csrc/include/subind/mask_driver.h.  Each kernel is one element-wise pass,
// parallelised with at::parallel_for (OpenMP) and written so the compiler
// vectorises the fp32 loops (the exp is a branch-free polynomial).  GEMMs stay
// in ATen; subind_fast/backends/cpu.py composes them with these passes.
#include <torch/extension.h>

#include "cpu_kernels.h"

namespace {

using subind_cpu::CpuKernels;
using subind_cpu::kGrain;

// fp32 partial sums over short blocks keep the loop vectorised; the blocks are
// added in double so the total stays accurate to ~1e-7 relative.
template <typename T>
double sigmoid_sum_range(const T* __restrict__ s, T beta, int64_t begin,
                         int64_t end) {
  constexpr int64_t kBlock = 512;
  double acc = 0.0;
  for (int64_t b = begin; b < end; b += kBlock) {
    const int64_t stop = std::min(end, b + kBlock);
    T local = 0;
#pragma omp simd reduction(+ : local)
    for (int64_t i = b; i < stop; ++i) {
      T m, slope;
      subind::sigmoid_and_slope(beta * s[i], m, slope);
      local += m;
    }
    acc += static_cast<double>(local);
  }
  return acc;
}

template <typename T>
double sigmoid_sum_loop(const T* s, T beta, int64_t n) {
  return at::parallel_reduce(
      int64_t(0), n, kGrain, 0.0,
      [=](int64_t begin, int64_t end, double acc) {
        return acc + sigmoid_sum_range(s, beta, begin, end);
      },
      std::plus<double>());
}

template <typename T>
void sigmoid_slope_loop(const T* s, T beta, T scale, T* out, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      T m, slope;
      subind::sigmoid_and_slope(beta * s[i], m, slope);
      out[i] = scale * slope;
    }
  });
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

// ------------------------------------------------------------- sampled masks
// One pass per direction; the noise is regenerated from (seed, stream, i), i
// being the element's offset in the memory order the pass walks (the layout
// subind_fast/_ops.py hands over), as subind_fast/noise.py defines it.
struct NoiseKey {
  uint32_t hash;
};

NoiseKey noise_key(const char* op, const at::Tensor& noise) {
  TORCH_CHECK(noise.scalar_type() == at::kLong && noise.numel() == 2 && noise.device().is_cpu(),
              op, ": noise must be an int64 CPU tensor [seed, stream], got ", noise.sizes(),
              " of ", noise.scalar_type(), " on ", noise.device());
  const auto key = noise.contiguous();
  const int64_t* k = key.data_ptr<int64_t>();
  return {subind::noise_key_hash(k[0], k[1])};
}

// Branch-free with the outputs fixed at compile time, so GCC vectorises it
// (the hash is 32-bit integer arithmetic, the log and exp are polynomials).
template <typename weight_t, typename logit_t, int kMode, bool kWantS, bool kWantTheta,
          bool kWantWeff>
void sampled_range(const weight_t* g, const weight_t* __restrict__ theta,
                   const logit_t* __restrict__ s, logit_t beta, uint32_t key,
                   logit_t* __restrict__ grad_s, weight_t* __restrict__ grad_theta,
                   weight_t* __restrict__ w_eff, int64_t begin, int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    logit_t m, slope;
    subind::sampled_mask_and_slope(s[i], beta, subind::logistic_noise<logit_t>(key, i), kMode,
                                   m, slope);
    const logit_t ti = static_cast<logit_t>(theta[i]);
    if constexpr (kWantWeff) w_eff[i] = static_cast<weight_t>(ti * m);
    if constexpr (kWantS || kWantTheta) {
      const logit_t gi = static_cast<logit_t>(g[i]);
      if constexpr (kWantS) grad_s[i] = gi * ti * beta * slope;
      if constexpr (kWantTheta) grad_theta[i] = static_cast<weight_t>(gi * m);
    }
  }
}

template <typename weight_t, typename logit_t, int kMode>
void sampled_dispatch(const weight_t* g, const weight_t* theta, const logit_t* s, logit_t beta,
                      uint32_t key, logit_t* grad_s, weight_t* grad_theta, weight_t* w_eff,
                      int64_t begin, int64_t end) {
  subind_cpu::with_outputs(grad_s, grad_theta, w_eff, [&](auto S, auto T, auto W) {
    sampled_range<weight_t, logit_t, kMode, decltype(S)::value, decltype(T)::value,
                  decltype(W)::value>(g, theta, s, beta, key, grad_s, grad_theta, w_eff, begin,
                                      end);
  });
}

template <typename weight_t, typename logit_t>
void sampled_pass(const weight_t* g, const weight_t* theta, const logit_t* s, logit_t beta,
                  int mode, uint32_t key, logit_t* grad_s, weight_t* grad_theta,
                  weight_t* w_eff, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    if (mode == subind::kConcrete) {
      sampled_dispatch<weight_t, logit_t, subind::kConcrete>(g, theta, s, beta, key, grad_s,
                                                             grad_theta, w_eff, begin, end);
    } else {
      sampled_dispatch<weight_t, logit_t, subind::kGumbel>(g, theta, s, beta, key, grad_s,
                                                           grad_theta, w_eff, begin, end);
    }
  });
}

void check_sampled(const char* op, const at::Tensor& weight, const at::Tensor& logits,
                   int64_t mode) {
  subind::check_pair(op, weight, logits);
  TORCH_CHECK(subind::sampled_mode_is_valid(mode), op, ": mode ", mode,
              " is not a sampled mode");
  TORCH_CHECK(weight.device().is_cpu(), op, ": CPU tensors expected, got ", weight.device());
}

// w_eff = theta * m(s, noise) with m a hard-concrete or Gumbel straight-through sample.
at::Tensor sampled_mask_weight(const at::Tensor& weight, const at::Tensor& logits,
                               const at::Tensor& beta_tensor, const at::Tensor& noise,
                               int64_t mode) {
  check_sampled("sampled_mask_weight", weight, logits, mode);
  const double beta = subind_cpu::host_beta("sampled_mask_weight", beta_tensor);
  const uint32_t key = noise_key("sampled_mask_weight", noise).hash;
  at::Tensor theta, s;
  std::tie(theta, s) = subind::flat_operands(weight, logits);
  auto out = at::empty_like(theta);
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "sampled_mask_weight", [&] {
    const weight_t* th = theta.data_ptr<weight_t>();
    const logit_t* sp = s.data_ptr<logit_t>();
    weight_t* o = out.data_ptr<weight_t>();
    sampled_pass<weight_t, logit_t>(nullptr, th, sp, static_cast<logit_t>(beta),
                                    static_cast<int>(mode), key, nullptr, nullptr, o,
                                    out.numel());
  });
  return out;
}

// (w_eff, dtheta, ds) from g = dL/dw_eff, the noise regenerated.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sampled_mask_weight_backward(
    const at::Tensor& grad_weff, const at::Tensor& weight, const at::Tensor& logits,
    const at::Tensor& beta_tensor, const at::Tensor& noise, int64_t mode, bool need_weff,
    bool need_weight_grad, bool need_logits_grad) {
  check_sampled("sampled_mask_weight_backward", weight, logits, mode);
  TORCH_CHECK(grad_weff.sizes() == weight.sizes(), "sampled_mask_weight_backward: grad shape ",
              grad_weff.sizes(), " != weight shape ", weight.sizes());
  const double beta = subind_cpu::host_beta("sampled_mask_weight_backward", beta_tensor);
  const uint32_t key = noise_key("sampled_mask_weight_backward", noise).hash;
  at::Tensor theta, s;
  std::tie(theta, s) = subind::flat_operands(weight, logits);
  auto g = subind::with_layout_of(grad_weff.to(theta.scalar_type()), theta);
  auto w_eff = need_weff ? at::empty_like(theta) : subind::empty_marker(theta);
  auto grad_w = need_weight_grad ? at::empty_like(theta) : subind::empty_marker(theta);
  auto grad_s = need_logits_grad ? at::empty_like(s) : subind::empty_marker(s);
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "sampled_mask_weight_backward", [&] {
    const weight_t* gp = g.data_ptr<weight_t>();
    const weight_t* th = theta.data_ptr<weight_t>();
    const logit_t* sp = s.data_ptr<logit_t>();
    logit_t* gs = need_logits_grad ? grad_s.data_ptr<logit_t>() : nullptr;
    weight_t* gw = need_weight_grad ? grad_w.data_ptr<weight_t>() : nullptr;
    weight_t* we = need_weff ? w_eff.data_ptr<weight_t>() : nullptr;
    sampled_pass<weight_t, logit_t>(gp, th, sp, static_cast<logit_t>(beta),
                                    static_cast<int>(mode), key, gs, gw, we, g.numel());
  });
  return {w_eff, grad_w, grad_s};
}

}  // namespace

void register_masked_linear(pybind11::module& m);  // masked_linear.cpp
void register_optim(pybind11::module& m);          // optim.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast CPU kernels: element-wise continuous-sparsification passes";
  m.def("mask_weight", &subind::mask_weight<CpuKernels>,
        "w_eff = theta * mask(s)", py::arg("weight"), py::arg("logits"),
        py::arg("beta"), py::arg("mode"));
  m.def("mask_weight_backward", &subind::mask_weight_backward<CpuKernels>,
        "(w_eff, dtheta, ds) from dL/dw_eff", py::arg("grad_weff"),
        py::arg("weight"), py::arg("logits"), py::arg("beta"), py::arg("mode"),
        py::arg("need_weff"), py::arg("need_weight_grad"),
        py::arg("need_logits_grad"));
  m.def("sigmoid_sum", &sigmoid_sum, "sum(sigmoid(beta * s))");
  m.def("sigmoid_sum_backward", &sigmoid_sum_backward,
        "grad * beta * sigmoid'(beta * s)");
  m.def("sampled_mask_weight", &sampled_mask_weight,
        "w_eff = theta * m(s, noise), m a hard-concrete or Gumbel straight-through sample",
        py::arg("weight"), py::arg("logits"), py::arg("beta"), py::arg("noise"),
        py::arg("mode"));
  m.def("sampled_mask_weight_backward", &sampled_mask_weight_backward,
        "(w_eff, dtheta, ds) of a sampled mask, the noise regenerated", py::arg("grad_weff"),
        py::arg("weight"), py::arg("logits"), py::arg("beta"), py::arg("noise"),
        py::arg("mode"), py::arg("need_weff"), py::arg("need_weight_grad"),
        py::arg("need_logits_grad"));
  register_masked_linear(m);
  register_optim(m);
}
