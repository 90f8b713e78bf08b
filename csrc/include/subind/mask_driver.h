// Host-side driver shared by the CPU and CUDA extensions: argument checks,
// memory layout, allocation and dtype dispatch.  A device provides only its
// loops through a `Kernels` type with three static templates:
//
//   Kernels::beta_arg<logit_t>(beta)   what the loops take for beta, from a
//                                      one-element tensor already on the
//                                      logits' device in their dtype: the
//                                      value on the CPU, a device pointer on
//                                      CUDA (so reading it never syncs)
//   Kernels::forward<weight_t, logit_t>(theta, s, w_eff, beta, mode, n)
//   Kernels::backward<weight_t, logit_t>(g, theta, s, beta, mode,
//                                        grad_s|null, grad_theta|null,
//                                        w_eff|null, n)
//
// with the per-element math of subind/mask_math.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <tuple>

#include "subind/mask_math.h"

namespace subind {

// Dense tensors with identical strides are walked as flat arrays in memory
// order; anything else is made contiguous first.  A transposed view (GPT-2's
// Conv1D stores W as in x out) therefore passes through without a copy.
inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.is_non_overlapping_and_dense() && a.sizes() == b.sizes() &&
         a.strides() == b.strides();
}

inline std::tuple<at::Tensor, at::Tensor> flat_operands(
    const at::Tensor& weight, const at::Tensor& logits) {
  if (same_dense_layout(weight, logits)) return {weight, logits};
  return {weight.contiguous(), logits.contiguous()};
}

// `t` re-laid out with the strides of `layout` (a copy only when they differ).
inline at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& layout) {
  if (same_dense_layout(layout, t)) return t;
  auto out = at::empty_like(layout, t.options());
  out.copy_(t);
  return out;
}

inline at::Tensor empty_marker(const at::Tensor& like) {
  return at::empty({0}, like.options());
}

inline void check_pair(const char* op, const at::Tensor& weight,
                       const at::Tensor& logits) {
  TORCH_CHECK(weight.sizes() == logits.sizes(), op, ": weight shape ",
              weight.sizes(), " != logits shape ", logits.sizes());
  TORCH_CHECK(weight.device() == logits.device(), op, ": weight on ",
              weight.device(), " but logits on ", logits.device());
}

// beta as a one-element tensor on the logits' device in their dtype (a no-op
// when it already is; a CPU scalar is copied to the device without a sync).
inline at::Tensor beta_like_logits(const char* op, const at::Tensor& beta,
                                   const at::Tensor& logits) {
  TORCH_CHECK(beta.numel() == 1 && beta.is_floating_point(), op,
              ": beta must be a one-element floating tensor, got shape ",
              beta.sizes(), " of ", beta.scalar_type());
  TORCH_CHECK(beta.device() == logits.device() || beta.device().is_cpu(), op,
              ": beta is on ", beta.device(), " but logits are on ", logits.device());
  return beta.reshape({}).to(logits.options(), /*non_blocking=*/true);
}

#define SUBIND_DISPATCH_WEIGHT_AND_LOGITS(weight, logits, NAME, ...)       \
  AT_DISPATCH_FLOATING_TYPES_AND2(                                        \
      at::kHalf, at::kBFloat16, (weight).scalar_type(), NAME, [&] {       \
        using weight_t = scalar_t;                                         \
        AT_DISPATCH_FLOATING_TYPES((logits).scalar_type(), NAME, [&] {    \
          using logit_t = scalar_t;                                        \
          __VA_ARGS__();                                                   \
        });                                                                \
      })

template <class Kernels>
at::Tensor mask_weight(const at::Tensor& weight, const at::Tensor& logits,
                       const at::Tensor& beta, int64_t mode) {
  check_pair("mask_weight", weight, logits);
  TORCH_CHECK(mode_is_valid(mode), "mask_weight: unknown mode ", mode);
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  auto out = at::empty_like(theta);
  if (out.numel() == 0) return out;
  const auto beta_t = beta_like_logits("mask_weight", beta, s);
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "mask_weight", [&] {
    Kernels::template forward<weight_t, logit_t>(
        theta.data_ptr<weight_t>(), s.data_ptr<logit_t>(),
        out.data_ptr<weight_t>(), Kernels::template beta_arg<logit_t>(beta_t),
        static_cast<int>(mode), out.numel());
  });
  return out;
}

// (w_eff, grad_weight, grad_logits) from g = dL/dw_eff; an output that was not
// asked for comes back as an empty tensor of shape [0].
template <class Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor> mask_weight_backward(
    const at::Tensor& grad_weff, const at::Tensor& weight,
    const at::Tensor& logits, const at::Tensor& beta, int64_t mode, bool need_weff,
    bool need_weight_grad, bool need_logits_grad) {
  check_pair("mask_weight_backward", weight, logits);
  TORCH_CHECK(mode_is_valid(mode), "mask_weight_backward: unknown mode ", mode);
  TORCH_CHECK(grad_weff.sizes() == weight.sizes(),
              "mask_weight_backward: grad shape ", grad_weff.sizes(),
              " != weight shape ", weight.sizes());
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  auto g = with_layout_of(grad_weff.to(theta.scalar_type()), theta);
  need_logits_grad = need_logits_grad && mode == kSoft;
  auto w_eff = need_weff ? at::empty_like(theta) : empty_marker(theta);
  auto grad_w = need_weight_grad ? at::empty_like(theta) : empty_marker(theta);
  auto grad_s = need_logits_grad ? at::empty_like(s) : empty_marker(s);
  if (g.numel() > 0 && (need_weff || need_weight_grad || need_logits_grad)) {
    const auto beta_t = beta_like_logits("mask_weight_backward", beta, s);
    SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "mask_weight_backward", [&] {
      Kernels::template backward<weight_t, logit_t>(
          g.data_ptr<weight_t>(), theta.data_ptr<weight_t>(),
          s.data_ptr<logit_t>(), Kernels::template beta_arg<logit_t>(beta_t),
          static_cast<int>(mode),
          need_logits_grad ? grad_s.data_ptr<logit_t>() : nullptr,
          need_weight_grad ? grad_w.data_ptr<weight_t>() : nullptr,
          need_weff ? w_eff.data_ptr<weight_t>() : nullptr, g.numel());
    });
  }
  return {w_eff, grad_w, grad_s};
}

}  // namespace subind
