// Masked linear on the CPU with the mask passes blocked over weight rows.
//
// Math (W_eff = theta ⊙ m(s), G = dL/dy):
//   forward   y  = x · W_effᵀ + b
//   backward  dW = Gᵀ · x            (never kept beyond one block)
//             ds = dW ⊙ theta ⊙ beta·m(1−m),  dtheta = dW ⊙ m
//             dx = G · W_eff
//
// Why blocks.  The GEMMs are ATen's; what the mask adds is element-wise
// traffic over the N×K weight.  Done on whole matrices, W_eff and dW_eff each
// make a round trip to DRAM and land in freshly allocated (page-faulting)
// memory, which costs as much as the GEMMs when M is small.  Here the weight
// is processed `block_rows` rows at a time: the block of W_eff (or dW_eff) is
// formed, then consumed by its GEMM while still in L2.  dW_eff is computed
// straight into the block of ds (or dtheta) and transformed in place.  With
// block_rows == N the same code is the unblocked schedule, with W_eff in the
// caller's reusable scratch buffer.
//
// The caller (subind_fast/backends/cpu.py) picks block_rows and owns the
// scratch buffers; weight and logits must be contiguous (N, K).
#include <torch/extension.h>

#include "cpu_kernels.h"

namespace {

using subind_cpu::CpuKernels;

void check_operands(const char* op, const at::Tensor& x2, const at::Tensor& weight,
                    const at::Tensor& logits, int64_t block_rows) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && logits.is_contiguous() &&
                  logits.sizes() == weight.sizes(),
              op, ": contiguous (N, K) weight and logits expected, got ", weight.sizes(),
              " and ", logits.sizes());
  TORCH_CHECK(x2.dim() == 2 && x2.size(1) == weight.size(1), op, ": input ", x2.sizes(),
              " does not match weight ", weight.sizes());
  TORCH_CHECK(block_rows > 0, op, ": block_rows must be positive");
}

at::Tensor block_view(const at::Tensor& scratch, int64_t rows, int64_t cols) {
  TORCH_CHECK(scratch.numel() >= rows * cols, "scratch buffer too small: ", scratch.numel(),
              " < ", rows * cols);
  return scratch.narrow(0, 0, rows * cols).view({rows, cols});
}

at::Tensor masked_linear_forward(const at::Tensor& x2, const at::Tensor& weight,
                                 const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& beta_tensor, int64_t mode, int64_t block_rows,
                                 const at::Tensor& scratch) {
  check_operands("masked_linear_forward", x2, weight, logits, block_rows);
  const double beta = subind_cpu::host_beta("masked_linear_forward", beta_tensor);
  const int64_t n = weight.size(0), k = weight.size(1);
  const bool has_bias = bias.has_value() && bias->defined();
  if (block_rows >= n) {
    // One block: let ATen allocate the output (measured ~1% faster than
    // addmm_out into a preallocated tensor at tiny-GPT-2 shapes).
    auto weff = block_view(scratch, n, k);
    SUBIND_DISPATCH_WEIGHT_AND_LOGITS(weight, logits, "masked_linear_forward", [&] {
      CpuKernels::forward<weight_t, logit_t>(
          weight.data_ptr<weight_t>(), logits.data_ptr<logit_t>(), weff.data_ptr<weight_t>(),
          static_cast<logit_t>(beta), static_cast<int>(mode), n * k);
    });
    return has_bias ? at::addmm(*bias, x2, weff.t()) : at::mm(x2, weff.t());
  }
  auto y = at::empty({x2.size(0), n}, x2.options());
  for (int64_t n0 = 0; n0 < n; n0 += block_rows) {
    const int64_t rows = std::min(block_rows, n - n0);
    auto weff = block_view(scratch, rows, k);
    SUBIND_DISPATCH_WEIGHT_AND_LOGITS(weight, logits, "masked_linear_forward", [&] {
      CpuKernels::forward<weight_t, logit_t>(
          weight.data_ptr<weight_t>() + n0 * k, logits.data_ptr<logit_t>() + n0 * k,
          weff.data_ptr<weight_t>(), static_cast<logit_t>(beta), static_cast<int>(mode),
          rows * k);
    });
    auto out = y.narrow(1, n0, rows);  // strided column block: BLAS writes it in place
    if (has_bias) {
      at::addmm_out(out, bias->narrow(0, n0, rows), x2, weff.t());
    } else {
      at::mm_out(out, x2, weff.t());
    }
  }
  return y;
}

// Returns (dx, dtheta, ds); what was not asked for is an empty [0] tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_linear_backward(
    const at::Tensor& g2, const at::Tensor& x2, const at::Tensor& weight,
    const at::Tensor& logits, const at::Tensor& beta_tensor, int64_t mode, bool need_x,
    bool need_weight, bool need_logits, int64_t block_rows, const at::Tensor& scratch_weff,
    const at::Tensor& scratch_grad) {
  check_operands("masked_linear_backward", x2, weight, logits, block_rows);
  const double beta = subind_cpu::host_beta("masked_linear_backward", beta_tensor);
  TORCH_CHECK(g2.dim() == 2 && g2.size(0) == x2.size(0) && g2.size(1) == weight.size(0),
              "masked_linear_backward: grad ", g2.sizes(), " does not match input ", x2.sizes(),
              " and weight ", weight.sizes());
  const int64_t m = x2.size(0), n = weight.size(0), k = weight.size(1);
  need_logits = need_logits && mode == subind::kSoft;
  const bool want_dw = need_weight || need_logits;
  // dW_eff lands where it will be transformed in place: in dtheta when that
  // is wanted, else in ds when ds has the weight's dtype, else in scratch.
  const bool dw_in_theta = need_weight;
  const bool dw_in_s = !need_weight && need_logits && logits.scalar_type() == weight.scalar_type();
  // Accumulating dx block by block re-reads dx (M×K) once per block; that
  // beats a full W_eff round trip only while M is at most the block height.
  const bool blocked = block_rows < n;

  auto grad_s = need_logits ? at::empty_like(logits) : at::empty({0}, logits.options());
  auto grad_w = need_weight ? at::empty_like(weight) : at::empty({0}, weight.options());
  auto grad_x = need_x ? at::empty({m, k}, x2.options()) : at::empty({0}, x2.options());
  if (!want_dw && !need_x) return {grad_x, grad_w, grad_s};

  for (int64_t n0 = 0; n0 < n; n0 += block_rows) {
    const int64_t rows = std::min(block_rows, n - n0);
    at::Tensor dw;
    if (want_dw) {
      dw = dw_in_theta ? grad_w.narrow(0, n0, rows)
           : dw_in_s   ? grad_s.narrow(0, n0, rows)
                       : block_view(scratch_grad, rows, k);
      at::mm_out(dw, g2.narrow(1, n0, rows).t(), x2);
    }
    at::Tensor weff;
    if (need_x) {
      weff = blocked ? block_view(scratch_weff, rows, k)
                     : block_view(scratch_weff, n, k).narrow(0, n0, rows);
    }
    SUBIND_DISPATCH_WEIGHT_AND_LOGITS(weight, logits, "masked_linear_backward", [&] {
      const weight_t* theta = weight.data_ptr<weight_t>() + n0 * k;
      const logit_t* s = logits.data_ptr<logit_t>() + n0 * k;
      weight_t* weff_ptr = need_x ? weff.data_ptr<weight_t>() : nullptr;
      if (!want_dw) {
        CpuKernels::forward<weight_t, logit_t>(theta, s, weff_ptr, static_cast<logit_t>(beta),
                                               static_cast<int>(mode), rows * k);
        return;
      }
      CpuKernels::backward<weight_t, logit_t>(
          dw.data_ptr<weight_t>(), theta, s, static_cast<logit_t>(beta), static_cast<int>(mode),
          need_logits ? grad_s.data_ptr<logit_t>() + n0 * k : nullptr,
          need_weight ? grad_w.data_ptr<weight_t>() + n0 * k : nullptr, weff_ptr, rows * k);
    });
    if (need_x && blocked) {
      auto g_block = g2.narrow(1, n0, rows);
      if (n0 == 0) {
        at::mm_out(grad_x, g_block, weff);
      } else {
        grad_x.addmm_(g_block, weff);
      }
    }
  }
  if (need_x && !blocked) at::mm_out(grad_x, g2, block_view(scratch_weff, n, k));
  return {grad_x, grad_w, grad_s};
}

}  // namespace

void register_masked_linear(pybind11::module& m) {
  m.def("masked_linear_forward", &masked_linear_forward,
        "y = x · (theta ⊙ m(s))ᵀ + b, mask formed block by block", py::arg("x2"),
        py::arg("weight"), py::arg("logits"), py::arg("bias"), py::arg("beta"), py::arg("mode"),
        py::arg("block_rows"), py::arg("scratch"));
  m.def("masked_linear_backward", &masked_linear_backward,
        "(dx, dtheta, ds) with dW_eff turned into ds/dtheta block by block", py::arg("g2"),
        py::arg("x2"), py::arg("weight"), py::arg("logits"), py::arg("beta"), py::arg("mode"),
        py::arg("need_x"), py::arg("need_weight"), py::arg("need_logits"),
        py::arg("block_rows"), py::arg("scratch_weff"), py::arg("scratch_grad"));
}
