// The CPU side of the mask passes, shared by the mask ops and convolutions
// (through the host driver, subind/mask_driver.h) and by the blocked masked
// linear (masked_linear.cpp): threads, scratch memory, and the call into the
// element-wise loop of the CPU capability chosen at load (loops/cpu_loops.h).
// Math: subind/mask_math.h.
#pragma once

#include <ATen/Parallel.h>

#include <type_traits>
#include <unordered_map>

#include "loops/cpu_loops.h"
#include "subind/mask_driver.h"

namespace subind_cpu {

using subind::MaskPass;

constexpr int64_t kGrain = 16384;

// beta's value for a CPU loop outside the mask pass (the L0 penalty).
inline double host_beta(const char* op, const at::Tensor& beta) {
  TORCH_CHECK(beta.numel() == 1 && beta.is_floating_point() && beta.device().is_cpu(), op,
              ": beta must be a one-element floating CPU tensor, got shape ", beta.sizes(),
              " of ", beta.scalar_type(), " on ", beta.device());
  return beta.item<double>();
}

inline uint32_t key_hash(const at::Tensor& key) {
  if (!key.defined()) return 0;
  const int64_t* k = key.data_ptr<int64_t>();
  return subind::noise_key_hash(k[0], k[1]);
}

// beta's value, read straight from a CPU float or double (item() costs two
// dispatches, which a small layer notices).
template <typename logit_t>
logit_t beta_value(const at::Tensor& beta) {
  TORCH_CHECK(beta.device().is_cpu(), "subind: beta must be on the CPU with CPU logits, got ",
              beta.device());
  if (beta.scalar_type() == at::kFloat) return static_cast<logit_t>(*beta.const_data_ptr<float>());
  if (beta.scalar_type() == at::kDouble) {
    return static_cast<logit_t>(*beta.const_data_ptr<double>());
  }
  return beta.item<logit_t>();
}

template <typename logit_t>
MaskParams<logit_t> params_of(const subind::MaskArgs& args) {
  // The loops dispatch on the code without a way to report an error.
  TORCH_CHECK(args.mode >= 0 && args.mode < subind::kModeCount,
              "mask pass: unknown mode code ", args.mode);
  return {args.mode, beta_value<logit_t>(args.beta), key_hash(args.key)};
}

// The loops' name for a weight element type: c10's 16-bit types as their bit
// patterns (the loops include no c10 header: cpu_loops.h says why).
template <typename weight_t>
struct LoopElement {
  using type = weight_t;
};
template <>
struct LoopElement<c10::Half> {
  using type = HalfBits;
};
template <>
struct LoopElement<c10::BFloat16> {
  using type = BFloat16Bits;
};
static_assert(sizeof(c10::Half) == sizeof(HalfBits) &&
              sizeof(c10::BFloat16) == sizeof(BFloat16Bits));

// Elements [begin, end) of the pass on the calling thread, by the chosen
// capability's loop; returns the penalty's Σp over them in a forward pass that
// carries it (else 0).
template <typename weight_t, typename logit_t>
double pass_range(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c,
                  int64_t begin, int64_t end) {
  using element_t = typename LoopElement<weight_t>::type;
  MaskPass<element_t, logit_t> q;
  q.g = reinterpret_cast<const element_t*>(p.g);
  q.theta = reinterpret_cast<const element_t*>(p.theta);
  q.s = p.s;
  q.grad_s = p.grad_s;
  q.grad_theta = reinterpret_cast<element_t*>(p.grad_theta);
  q.w_eff = reinterpret_cast<element_t*>(p.w_eff);
  q.n = p.n;
  q.offset = p.offset;
  q.l0_sum = p.l0_sum;
  q.grad_l0 = p.grad_l0;
  return std::get<MaskRangeFn<element_t, logit_t>>(active_loops().mask_range)(q, c, begin, end);
}

// The whole pass, split over the intra-op threads; a forward pass that
// carries the penalty adds its Σp to *p.l0_sum.
template <typename weight_t, typename logit_t>
void pass_parallel(const MaskPass<weight_t, logit_t>& p, const MaskParams<logit_t>& c) {
  if (p.l0_sum != nullptr && p.grad_s == nullptr) {
    *p.l0_sum += at::parallel_reduce(
        int64_t(0), p.n, kGrain, 0.0,
        [&](int64_t begin, int64_t end, double acc) { return acc + pass_range(p, c, begin, end); },
        std::plus<double>());
    return;
  }
  at::parallel_for(0, p.n, kGrain,
                   [&](int64_t begin, int64_t end) { pass_range(p, c, begin, end); });
}

// Per-thread scratch, grown to the largest layer seen and reused, so no step
// pays for page-faulting fresh weight-sized memory (a fresh multi-MB buffer
// comes from mmap: every page faults on first touch).  Slots: the blocked
// linear's W_eff and dW_eff blocks, and transient whole weights.
enum ScratchSlot : int { kWeffSlot = 0, kGradSlot = 1, kTransientSlot = 2 };

inline at::Tensor scratch(int slot, at::ScalarType dtype, int64_t numel) {
  thread_local std::unordered_map<int, at::Tensor> buffers;
  auto& buf = buffers[slot * 64 + static_cast<int>(dtype)];
  if (!buf.defined() || buf.numel() < numel) {
    buf = at::empty({std::max<int64_t>(numel, 1)}, at::TensorOptions().dtype(dtype));
  }
  return buf;
}

struct CpuKernels {
  template <typename weight_t, typename logit_t>
  static void pass(const MaskPass<weight_t, logit_t>& p, const subind::MaskArgs& args) {
    pass_parallel(p, params_of<logit_t>(args));
  }

  // A weight-shaped W_eff that lives only within one op call (a convolution
  // consumes it): in this thread's scratch.
  static at::Tensor transient_like(const at::Tensor& dense) {
    auto buf = scratch(kTransientSlot, dense.scalar_type(), dense.numel());
    return at::from_blob(buf.data_ptr(), dense.sizes(), dense.strides(), buf.options());
  }
};

}  // namespace subind_cpu
