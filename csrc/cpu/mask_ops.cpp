// CPU kernels for continuous-sparsification masks.  Math: see
// csrc/include/subind/mask_math.h; layout, checks and dtype dispatch:
// csrc/include/subind/mask_driver.h.  Each kernel is one element-wise pass,
// parallelised with at::parallel_for (OpenMP) and written so the compiler
// vectorises the fp32 loops (the exp is a branch-free polynomial).  GEMMs stay
// in ATen; subind_fast/backends/cpu.py composes them with these passes.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "subind/mask_driver.h"

namespace {

constexpr int64_t kGrain = 16384;

// The loops below are kept branch-free (selects, unconditional loads, store
// choices fixed at compile time) so GCC vectorises them; with a data-dependent
// branch on sign(s) they ran ~10x slower on random logits.
template <typename weight_t, typename logit_t, bool kWantS, bool kWantTheta,
          bool kWantWeff>
void soft_backward_range(const weight_t* __restrict__ g,
                         const weight_t* __restrict__ theta,
                         const logit_t* __restrict__ s, logit_t beta,
                         logit_t* __restrict__ grad_s,
                         weight_t* __restrict__ grad_theta,
                         weight_t* __restrict__ w_eff, int64_t begin,
                         int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    logit_t m, slope;
    subind::sigmoid_and_slope(beta * s[i], m, slope);
    const logit_t gi = static_cast<logit_t>(g[i]);
    const logit_t ti = static_cast<logit_t>(theta[i]);
    if constexpr (kWantS) grad_s[i] = gi * ti * beta * slope;
    if constexpr (kWantTheta) grad_theta[i] = static_cast<weight_t>(gi * m);
    if constexpr (kWantWeff) w_eff[i] = static_cast<weight_t>(ti * m);
  }
}

// Hard (m = 1[s > 0]) and none (m = 1): no logits gradient.
template <typename weight_t, typename logit_t, bool kWantTheta, bool kWantWeff>
void binary_backward_range(const weight_t* __restrict__ g,
                           const weight_t* __restrict__ theta,
                           const logit_t* __restrict__ s, bool hard,
                           weight_t* __restrict__ grad_theta,
                           weight_t* __restrict__ w_eff, int64_t begin,
                           int64_t end) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    const bool keep = !hard || s[i] > logit_t(0);
    const weight_t gi = g[i];
    const weight_t ti = theta[i];
    if constexpr (kWantTheta) grad_theta[i] = keep ? gi : weight_t(0);
    if constexpr (kWantWeff) w_eff[i] = keep ? ti : weight_t(0);
  }
}

struct CpuKernels {
  template <typename weight_t, typename logit_t>
  static void forward(const weight_t* theta, const logit_t* s, weight_t* out,
                      logit_t beta, int mode, int64_t n) {
    at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
      if (mode == subind::kSoft) {
                const weight_t* __restrict__ th = theta;
        const logit_t* __restrict__ sp = s;
        weight_t* __restrict__ o = out;
#pragma omp simd
        for (int64_t i = begin; i < end; ++i) {
          logit_t m, slope;
          subind::sigmoid_and_slope(beta * sp[i], m, slope);
          o[i] = static_cast<weight_t>(static_cast<logit_t>(th[i]) * m);
        }
      } else {
        binary_backward_range<weight_t, logit_t, false, true>(
            theta, theta, s, mode == subind::kHard, nullptr, out, begin, end);
      }
    });
  }

  template <typename weight_t, typename logit_t>
  static void backward(const weight_t* g, const weight_t* theta,
                       const logit_t* s, logit_t beta, int mode,
                       logit_t* grad_s, weight_t* grad_theta, weight_t* w_eff,
                       int64_t n) {
    at::parallel_for(0, n, kGrain, [=](int64_t begin, int64_t end) {
      if (mode == subind::kSoft) {
        const int which = (grad_s ? 4 : 0) | (grad_theta ? 2 : 0) | (w_eff ? 1 : 0);
#define SUBIND_SOFT(S, T, W)                                              \
  soft_backward_range<weight_t, logit_t, S, T, W>(g, theta, s, beta, grad_s, \
                                                  grad_theta, w_eff, begin, end)
        switch (which) {
          case 7: SUBIND_SOFT(true, true, true); break;
          case 6: SUBIND_SOFT(true, true, false); break;
          case 5: SUBIND_SOFT(true, false, true); break;
          case 4: SUBIND_SOFT(true, false, false); break;
          case 3: SUBIND_SOFT(false, true, true); break;
          case 2: SUBIND_SOFT(false, true, false); break;
          case 1: SUBIND_SOFT(false, false, true); break;
          default: break;
        }
#undef SUBIND_SOFT
      } else {
        const bool hard = mode == subind::kHard;
        if (grad_theta && w_eff) {
          binary_backward_range<weight_t, logit_t, true, true>(
              g, theta, s, hard, grad_theta, w_eff, begin, end);
        } else if (grad_theta) {
          binary_backward_range<weight_t, logit_t, true, false>(
              g, theta, s, hard, grad_theta, nullptr, begin, end);
        } else if (w_eff) {
          binary_backward_range<weight_t, logit_t, false, true>(
              g, theta, s, hard, nullptr, w_eff, begin, end);
        }
      }
    });
  }
};

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
at::Tensor sigmoid_sum(const at::Tensor& logits, double beta) {
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
                                double beta) {
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
}
