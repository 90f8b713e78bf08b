// subind::masked_linear and its backward on the CPU: the mask passes blocked
// over the rows of the weight as it is stored, for every mode and layout.
//
// Math (W_eff = theta ⊙ m(s), G = dL/dy):
//   forward   y  = x · W_effᵀ + b    (masked_linear_l0: and Σp(s), the L0 penalty)
//   backward  dW = Gᵀ · x            (never kept beyond one block)
//             ds = dW ⊙ theta ⊙ beta·slope (+ grad_l0·∂p/∂s),  dtheta = dW ⊙ m
//             dx = G · W_eff
//
// Why blocks.  The GEMMs are ATen's; what the mask adds is element-wise
// traffic over the N×K weight.  Done on whole matrices, W_eff and dW_eff each
// make a round trip to DRAM and land in freshly allocated (page-faulting)
// memory, which costs as much as the GEMMs when M is small.  Here the weight
// is processed a block of stored rows at a time: the block of W_eff (or
// dW_eff) is formed, then consumed by its GEMM while still in L2.  dW_eff is
// computed straight into the block of ds (or dtheta) and transformed in place.
// With one block the same code is the unblocked schedule, W_eff in a
// per-thread scratch buffer reused across calls.  With several blocks (small
// M) each intra-op thread takes whole blocks — its own mask passes and
// single-threaded GEMMs — since one block's GEMMs are too small to split:
// at M = 64, 768→3072 the two-thread step went from no faster than one thread
// to 1.7× faster.  A sum over blocks (y or dx, by layout) gets one partial per
// thread, added at the end.
//
// Layouts.  An nn.Linear weight is stored N×K (rows = outputs); GPT-2's
// Conv1D stores it K×N and hands us the transposed view (rows = inputs).
// Both are blocked along their stored rows, so neither is copied: with rows =
// outputs, y's column blocks are independent and dx accumulates over blocks;
// with rows = inputs, y accumulates and dx's column blocks are independent.
// Row-sliced weights (a row stride larger than the row) are walked row by row.
// Anything else (both strides > 1) is copied to the row layout first.
#include <torch/library.h>

#include "cpu_kernels.h"

namespace {

using subind::MaskPass;
using subind_cpu::MaskParams;

// A block of W_eff plus the matching rows of θ, s and ∂W_eff should sit in a
// 1 MiB L2 together: 256 KiB per array.
constexpr int64_t kBlockBytes = 256 * 1024;

// Stored rows per block.  Blocking makes one side accumulate across blocks
// (one extra pass over an M-row operand per block), which only pays while M
// is no larger than the block.
int64_t block_rows_for(int64_t m, int64_t rows, int64_t row_length, int64_t itemsize) {
  int64_t block = (kBlockBytes / std::max<int64_t>(1, row_length * itemsize)) / 16 * 16;
  block = std::max<int64_t>(16, block);
  return (m <= block && block < rows) ? block : std::max<int64_t>(rows, 1);
}

// The weight and logits as stored rows: row r of θ at theta + r*ld_theta.
struct Stored {
  at::Tensor theta, s;
  bool rows_are_inputs;  // GPT-2 Conv1D: stored K×N
  int64_t rows, row_length, ld_theta, ld_s;
};

Stored stored_rows(const at::Tensor& weight, const at::Tensor& logits) {
  // Stored K×N only when both are dense in that one layout: the noise of a
  // sampled mode is then numbered in memory order, as mask_driver.h states,
  // and the gradients keep the weight's layout (subind::like_weight).
  if (subind::same_dense_layout(weight, logits) && weight.stride(0) == 1 &&
      weight.stride(1) != 1) {
    return {weight, logits, true, weight.size(1), weight.size(0), weight.stride(1),
            logits.stride(1)};
  }
  // Otherwise row by row, numbered as the contiguous copy would be; only a
  // weight or logits without unit stride along a row is copied.
  const auto unit_rows = [](const at::Tensor& t) {
    return t.stride(1) == 1 || t.size(1) == 1 ? t : t.contiguous();
  };
  auto theta = unit_rows(weight), s = unit_rows(logits);
  const int64_t k = weight.size(1);
  const bool one_row = weight.size(0) == 1;
  return {theta, s, false, weight.size(0), k, one_row ? k : theta.stride(0),
          one_row ? k : s.stride(0)};
}

// One mask pass over stored rows [r0, r0 + nr).  `pass` holds pointers to
// row r0 of every array; outputs and g are packed rows of row_length.  A
// forward pass with pass.l0_sum adds the rows' Σp to it.
template <typename weight_t, typename logit_t>
void block_pass(MaskPass<weight_t, logit_t> pass, const MaskParams<logit_t>& c,
                const Stored& w, int64_t r0, int64_t nr) {
  const int64_t len = w.row_length;
  if (w.ld_theta == len && w.ld_s == len) {
    pass.n = nr * len;
    pass.offset = r0 * len;
    subind_cpu::pass_parallel(pass, c);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, subind_cpu::kGrain / std::max<int64_t>(len, 1));
  const auto rows = [&](int64_t begin, int64_t end) {
    double l0_sum = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      MaskPass<weight_t, logit_t> row = pass;
      row.theta = pass.theta + r * w.ld_theta;
      row.s = pass.s + r * w.ld_s;
      if (row.g) row.g = pass.g + r * len;
      if (row.grad_s) row.grad_s = pass.grad_s + r * len;
      if (row.grad_theta) row.grad_theta = pass.grad_theta + r * len;
      if (row.w_eff) row.w_eff = pass.w_eff + r * len;
      row.n = len;
      row.offset = (r0 + r) * len;
      l0_sum += subind_cpu::pass_range(row, c, 0, len);
    }
    return l0_sum;
  };
  if (pass.l0_sum != nullptr && pass.grad_s == nullptr) {
    *pass.l0_sum += at::parallel_reduce(
        int64_t(0), nr, grain, 0.0,
        [&](int64_t begin, int64_t end, double acc) { return acc + rows(begin, end); },
        std::plus<double>());
    return;
  }
  at::parallel_for(0, nr, grain, [&](int64_t begin, int64_t end) { rows(begin, end); });
}

// A new weight-shaped tensor whose stored rows are packed like w's.
at::Tensor like_stored(const Stored& w, const at::Tensor& weight, at::ScalarType dtype) {
  auto opts = weight.options().dtype(dtype);
  if (w.rows_are_inputs) return at::empty({weight.size(1), weight.size(0)}, opts).t();
  return at::empty(weight.sizes(), opts);
}

// Columns [c0, c0 + nc) of a matrix: the matrix itself when that is all of
// it (a small layer's call is mostly fixed cost: every view op counts).
at::Tensor columns(const at::Tensor& t, int64_t c0, int64_t nc) {
  return (c0 == 0 && nc == t.size(1)) ? t : t.narrow(1, c0, nc);
}

at::Tensor stored_block(const Stored& w, const at::Tensor& t, int64_t r0, int64_t nr) {
  const auto rows = w.rows_are_inputs ? t.t() : t;
  return (r0 == 0 && nr == rows.size(0)) ? rows : rows.narrow(0, r0, nr);
}

// A packed rows × cols view of the start of a scratch buffer (no dispatch:
// the buffer outlives the call).
at::Tensor packed(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return at::from_blob(buffer.data_ptr(), {rows, cols}, buffer.options());
}

// The blocks [0, nblocks) over the intra-op threads, whole blocks per thread:
// fn(t, first, last) runs blocks [first, last) as thread t's share (t = 0 on
// the calling thread's share).  Blocking only happens at small M, where one
// block's GEMMs are too small to split over threads (a 64×768×80 GEMM on two
// threads ran no faster than on one), so each thread runs its blocks' mask
// passes and GEMMs alone instead.  With one thread: fn(0, 0, nblocks).
int64_t thread_shares(int64_t nblocks) {
  return std::min<int64_t>(at::get_num_threads(), nblocks);
}

template <typename F>
void over_threads(int64_t nblocks, F&& fn) {
  const int64_t shares = thread_shares(nblocks);
  if (shares <= 1) {
    fn(0, 0, nblocks);
    return;
  }
  at::parallel_for(0, shares, 1, [&](int64_t t0, int64_t t1) {
    // Worker threads do not inherit the caller's dispatch state: this kernel
    // runs below autograd, and its GEMMs write into preallocated outputs.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t t = t0; t < t1; ++t) fn(t, t * nblocks / shares, (t + 1) * nblocks / shares);
  });
}

// Where thread share t accumulates a sum over its blocks: the output itself
// for share 0, a zeroed partial for the others (added in by sum_partials).
std::vector<at::Tensor> partials_for(const at::Tensor& out, int64_t nblocks) {
  std::vector<at::Tensor> partials{out};
  for (int64_t t = 1; t < thread_shares(nblocks); ++t) partials.push_back(at::zeros_like(out));
  return partials;
}

void sum_partials(const std::vector<at::Tensor>& partials) {
  for (size_t t = 1; t < partials.size(); ++t) partials[0].add_(partials[t]);
}

// y, and with `l0.sum` set the logits' L0 penalty summed into it.
at::Tensor masked_linear_forward(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& beta, c10::string_view mode,
                                 const c10::optional<at::Tensor>& noise,
                                 const subind::L0Terms& l0) {
  subind::check_pair(op, weight, logits);
  subind::check_linear_operands(op, x, weight, bias);
  const auto args = subind::mask_args(op, mode, beta, logits, noise);
  if (l0.sum.defined()) subind::check_l0_mode(op, args.mode);
  if (weight.numel() == 0) {  // Σp over no logits is 0
    return subind::linear_forward<subind_cpu::CpuKernels>(x, weight, logits, bias, beta, mode,
                                                          noise);
  }
  const Stored w = stored_rows(weight, logits);
  const int64_t n = weight.size(0), k = weight.size(1);
  const auto x2 = x.reshape({-1, k});
  const int64_t m = x2.size(0);
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = n;
  auto y = at::empty(out_sizes, x.options());
  auto y2 = y.view({m, n});
  const bool has_bias = bias.has_value() && bias->defined();
  const int64_t block = block_rows_for(m, w.rows, w.row_length, weight.element_size());
  const int64_t nblocks = (w.rows + block - 1) / block;
  // Stored rows = inputs: y sums over the blocks, one partial per thread share.
  auto y_partials = w.rows_are_inputs ? partials_for(y2, nblocks) : std::vector<at::Tensor>{};
  std::vector<double> l0_shares(std::max<int64_t>(1, thread_shares(nblocks)), 0.0);
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(w.theta, w.s, "subind::masked_linear", [&] {
    const auto c = subind_cpu::params_of<logit_t>(args);
    over_threads(nblocks, [&](int64_t t, int64_t first, int64_t last) {
      const auto buffer = subind_cpu::scratch(subind_cpu::kWeffSlot, weight.scalar_type(),
                                              std::min(block, w.rows) * w.row_length);
      for (int64_t b = first; b < last; ++b) {
        const int64_t r0 = b * block, nr = std::min(block, w.rows - r0);
        auto weff = packed(buffer, nr, w.row_length);
        MaskPass<weight_t, logit_t> pass;
        pass.theta = w.theta.data_ptr<weight_t>() + r0 * w.ld_theta;
        pass.s = w.s.data_ptr<logit_t>() + r0 * w.ld_s;
        pass.w_eff = weff.data_ptr<weight_t>();
        if (l0.sum.defined()) pass.l0_sum = &l0_shares[t];
        block_pass(pass, c, w, r0, nr);
        if (!w.rows_are_inputs) {
          auto out = columns(y2, r0, nr);  // a strided column block: BLAS writes it in place
          if (has_bias) {
            at::addmm_out(out, nr == n ? *bias : bias->narrow(0, r0, nr), x2, weff.t());
          } else {
            at::mm_out(out, x2, weff.t());
          }
          continue;
        }
        auto& acc = y_partials[t];
        if (b > first || t > 0) {
          acc.addmm_(x2.narrow(1, r0, nr), weff);  // later blocks, or a zeroed partial
        } else if (has_bias) {
          at::addmm_out(acc, *bias, columns(x2, r0, nr), weff);
        } else {
          at::mm_out(acc, columns(x2, r0, nr), weff);
        }
      }
    });
  });
  if (w.rows_are_inputs) sum_partials(y_partials);
  if (l0.sum.defined()) {
    double total = 0.0;
    for (double share : l0_shares) total += share;
    *l0.sum.data_ptr<double>() += total;
  }
  return y;
}

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                             const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                             const at::Tensor& beta, c10::string_view mode,
                             const c10::optional<at::Tensor>& noise) {
  return masked_linear_forward("subind::masked_linear", x, weight, logits, bias, beta, mode,
                               noise, {});
}

std::tuple<at::Tensor, at::Tensor> masked_linear_l0_cpu(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const c10::optional<at::Tensor>& bias, const at::Tensor& beta, c10::string_view mode,
    const c10::optional<at::Tensor>& noise) {
  const auto l0 = subind::l0_forward(logits);
  auto y = masked_linear_forward("subind::masked_linear_l0", x, weight, logits, bias, beta, mode,
                                 noise, l0);
  return {y, subind::l0_value(l0, logits)};
}

// (dx, dtheta, ds, db); what was not asked for is an empty [0] tensor.
subind::TensorQuad masked_linear_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                              const at::Tensor& weight, const at::Tensor& logits,
                                              const at::Tensor& beta, c10::string_view mode,
                                              std::array<bool, 4> needs,
                                              const c10::optional<at::Tensor>& noise,
                                              const c10::optional<at::Tensor>& grad_l0) {
  const char* op = "subind::masked_linear_backward";
  subind::check_pair(op, weight, logits);
  if (weight.numel() == 0) {
    return subind::linear_backward<subind_cpu::CpuKernels>(grad, x, weight, logits, beta, mode,
                                                           needs, noise, grad_l0);
  }
  const auto args = subind::mask_args(op, mode, beta, logits, noise);
  const Stored w = stored_rows(weight, logits);
  const int64_t n = weight.size(0), k = weight.size(1);
  const auto x2 = x.reshape({-1, k});
  const int64_t m = x2.size(0);
  TORCH_CHECK(grad.numel() == m * n && grad.size(-1) == n, op, ": grad ", grad.sizes(),
              " does not match input ", x.sizes(), " and weight ", weight.sizes());
  const auto g2 = grad.reshape({m, n});
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[3];
  const bool need_s = needs[2] && subind::mode_is_training(args.mode);
  const bool want_dw = need_w || need_s;

  auto grad_w = need_w ? like_stored(w, weight, weight.scalar_type()) : subind::empty_marker(weight);
  auto grad_s = need_s ? like_stored(w, weight, logits.scalar_type()) : subind::empty_marker(logits);
  auto grad_x = need_x ? at::empty(x.sizes(), x.options()) : subind::empty_marker(x);
  auto grad_b = need_b ? g2.sum(0) : subind::empty_marker(grad);
  if (!want_dw && !need_x) return {grad_x, grad_w, grad_s, grad_b};
  auto dx2 = need_x ? grad_x.view({m, k}) : grad_x;

  // dW_eff lands where it is transformed in place: in dtheta when that is
  // wanted, else in ds when ds has the weight's dtype, else in scratch.
  const bool dw_in_s = !need_w && need_s && logits.scalar_type() == weight.scalar_type();
  const auto l0 = subind::l0_backward(grad_l0, logits);
  const int64_t block = block_rows_for(m, w.rows, w.row_length, weight.element_size());
  const int64_t block_numel = std::min(block, w.rows) * w.row_length;
  const int64_t nblocks = (w.rows + block - 1) / block;
  // Stored rows = outputs: dx sums over the blocks, one partial per thread share.
  auto dx_partials =
      (need_x && !w.rows_are_inputs) ? partials_for(dx2, nblocks) : std::vector<at::Tensor>{};
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(w.theta, w.s, "subind::masked_linear", [&] {
    const auto c = subind_cpu::params_of<logit_t>(args);
    const logit_t* grad_l0_ptr = (need_s && l0.grad.defined())
                                     ? l0.grad.const_data_ptr<logit_t>() : nullptr;
    over_threads(nblocks, [&](int64_t t, int64_t first, int64_t last) {
      const auto weff_buffer = need_x ? subind_cpu::scratch(subind_cpu::kWeffSlot,
                                                            weight.scalar_type(), block_numel)
                                      : at::Tensor();
      const auto grad_buffer = (want_dw && !need_w && !dw_in_s)
                                   ? subind_cpu::scratch(subind_cpu::kGradSlot,
                                                         weight.scalar_type(), block_numel)
                                   : at::Tensor();
      for (int64_t b = first; b < last; ++b) {
        const int64_t r0 = b * block, nr = std::min(block, w.rows - r0);
        at::Tensor dw;
        if (want_dw) {
          dw = need_w ? stored_block(w, grad_w, r0, nr)
               : dw_in_s ? stored_block(w, grad_s, r0, nr)
                         : packed(grad_buffer, nr, w.row_length);
          if (w.rows_are_inputs) {
            at::mm_out(dw, columns(x2, r0, nr).t(), g2);
          } else {
            at::mm_out(dw, columns(g2, r0, nr).t(), x2);
          }
        }
        at::Tensor weff = need_x ? packed(weff_buffer, nr, w.row_length) : at::Tensor();
        MaskPass<weight_t, logit_t> pass;
        pass.theta = w.theta.data_ptr<weight_t>() + r0 * w.ld_theta;
        pass.s = w.s.data_ptr<logit_t>() + r0 * w.ld_s;
        pass.g = want_dw ? dw.data_ptr<weight_t>() : nullptr;
        pass.grad_s = need_s ? grad_s.data_ptr<logit_t>() + r0 * w.row_length : nullptr;
        pass.grad_theta = need_w ? grad_w.data_ptr<weight_t>() + r0 * w.row_length : nullptr;
        pass.w_eff = need_x ? weff.data_ptr<weight_t>() : nullptr;
        pass.grad_l0 = grad_l0_ptr;
        block_pass(pass, c, w, r0, nr);
        if (!need_x) continue;
        if (w.rows_are_inputs) {
          auto dx_block = columns(dx2, r0, nr);  // strided: BLAS writes it in place
          at::mm_out(dx_block, g2, weff.t());
          continue;
        }
        auto& acc = dx_partials[t];
        if (b > first || t > 0) {
          acc.addmm_(g2.narrow(1, r0, nr), weff);  // later blocks, or a zeroed partial
        } else {
          at::mm_out(acc, columns(g2, r0, nr), weff);
        }
      }
    });
  });
  if (!dx_partials.empty()) sum_partials(dx_partials);
  return {grad_x, grad_w, grad_s, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(subind, CPU, m) {
  m.impl("masked_linear", &masked_linear_cpu);
  m.impl("masked_linear_l0", &masked_linear_l0_cpu);
  m.impl("masked_linear_backward", &masked_linear_backward_cpu);
}
