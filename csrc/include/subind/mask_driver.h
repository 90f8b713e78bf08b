// The host driver every device shares: mode parsing, argument checks, memory
// layout, allocation, dtype dispatch, and the composition of the mask pass
// with ATen's GEMMs (convolutions everywhere; linear layers on devices
// without a fused schedule).  A device provides only its element-wise loop,
// through a `Kernels` type with one static template:
//
//   Kernels::pass<weight_t, logit_t>(const MaskPass<weight_t, logit_t>&, const MaskArgs&)
//
// which, for the n elements of the pass, computes m (and its slope) from s,
// beta, the mode and -- in a sampled mode -- the noise of element offset + i,
// then writes whichever of w_eff = theta*m, dtheta = g*m and
// ds = g*theta*beta*slope the pass asks for (subind/mask_math.h).  A pass in
// a training mode may also carry the L0 penalty (mask_math.h:
// penalty_and_slope): a forward pass adds sum(p) to `l0_sum`, a backward pass
// adds grad_l0 * dp/ds to ds.  The same driver serves every mode,
// deterministic or sampled.
//
// An output that was not requested is returned as an empty tensor of shape
// [0] (`empty_marker`): a custom op cannot return None.  The autograd kernels
// (csrc/ops/autograd.cpp) turn markers back into undefined gradients.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

#include "subind/mask_math.h"
#include "subind/mask_pass.h"

namespace subind {

using TensorTriple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using TensorQuad = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline int parse_mode(const char* op, c10::string_view name) {
  for (int code = 0; code < kModeCount; ++code) {
    if (name == kModeNames[code]) return code;
  }
  TORCH_CHECK(false, op, ": unknown mask mode '", std::string(name),
              "'; the modes are soft, hard, none, concrete and gumbel");
}

// What a mask pass needs besides the arrays: the mode, beta (a one-element
// floating tensor on the logits' device or the CPU; each device reads it its
// own way) and, in a sampled mode, the noise key [seed, stream] on the
// logits' device.
struct MaskArgs {
  int mode;
  at::Tensor beta;
  at::Tensor key;
};

// The L0 penalty a pass takes part in: `sum`, a zeroed float64 scalar the
// forward pass accumulates into; `grad`, dL/d(penalty) for a backward pass.
// Both undefined: the pass has no penalty.
struct L0Terms {
  at::Tensor sum;
  at::Tensor grad;
};

// A zeroed float64 accumulator for the penalty of a forward pass, on the logits' device.
inline L0Terms l0_forward(const at::Tensor& logits) {
  return {at::zeros({}, logits.options().dtype(at::kDouble)), at::Tensor()};
}

// dL/d(penalty) as the backward pass reads it: a scalar in the logits' dtype
// on their device (copied without a host sync), or none.
inline L0Terms l0_backward(const c10::optional<at::Tensor>& grad_l0, const at::Tensor& logits) {
  if (!grad_l0.has_value() || !grad_l0->defined()) return {};
  TORCH_CHECK(grad_l0->numel() == 1, "subind: grad_l0 must be a one-element tensor, got shape ",
              grad_l0->sizes());
  return {at::Tensor(), grad_l0->reshape({}).to(logits.device(), logits.scalar_type(),
                                                /*non_blocking=*/true)};
}

// The penalty a forward pass accumulated, in the logits' dtype.
inline at::Tensor l0_value(const L0Terms& l0, const at::Tensor& logits) {
  return l0.sum.to(logits.scalar_type());
}

inline void check_l0_mode(const char* op, int mode) {
  TORCH_CHECK(mode_is_training(mode), op, ": the L0 penalty is fused into the training modes "
              "(soft, concrete, gumbel) only, got mode '", kModeNames[mode], "'");
}

inline at::Tensor empty_marker(const at::Tensor& like) {
  return at::empty({0}, like.options());
}

// Dense tensors with identical strides are walked as flat arrays in memory
// order; anything else is made contiguous first.  A transposed view (GPT-2's
// Conv1D stores W as in x out) therefore passes through without a copy, and
// the noise of a sampled mode is numbered in that memory order.
// (Symbolic sizes throughout: the Meta kernels run this on fake tensors.)
inline bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.is_non_overlapping_and_dense() && a.sym_sizes() == b.sym_sizes() &&
         a.sym_strides() == b.sym_strides();
}

inline std::tuple<at::Tensor, at::Tensor> flat_operands(const at::Tensor& weight,
                                                        const at::Tensor& logits) {
  if (same_dense_layout(weight, logits)) return {weight, logits};
  return {weight.contiguous(), logits.contiguous()};
}

// A new tensor shaped like the weight, laid out as the mask pass walks it.
// Every device (and the Meta kernels) allocates weight-shaped outputs so.
inline at::Tensor like_weight(const at::Tensor& weight, const at::Tensor& logits,
                              at::ScalarType dtype) {
  if (same_dense_layout(weight, logits)) return at::empty_like(weight, weight.options().dtype(dtype));
  return at::empty_symint(weight.sym_sizes(), weight.options().dtype(dtype));
}

// `t` re-laid out with the strides of `layout` (a copy only when they differ).
inline at::Tensor with_layout_of(const at::Tensor& t, const at::Tensor& layout) {
  if (same_dense_layout(layout, t)) return t;
  auto out = at::empty_like(layout, t.options());
  out.copy_(t);
  return out;
}

inline void check_pair(const char* op, const at::Tensor& weight, const at::Tensor& logits) {
  TORCH_CHECK(weight.sym_sizes() == logits.sym_sizes(), op, ": weight shape ",
              weight.sym_sizes(), " != logits shape ", logits.sym_sizes());
  TORCH_CHECK(weight.device() == logits.device(), op, ": weight on ", weight.device(),
              " but logits on ", logits.device());
}

// A masked linear's input and bias against its weight.  The layers call the
// op without Python-side checks, so these name the argument and shapes.
inline void check_linear_operands(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D (out, in), got shape ",
                    weight.sym_sizes());
  TORCH_CHECK_TYPE(x.is_floating_point(), op, ": input has dtype ", x.scalar_type(),
                   "; a floating-point input is required");
  TORCH_CHECK_TYPE(x.scalar_type() == weight.scalar_type(), op, ": input dtype ",
                   x.scalar_type(), " differs from weight dtype ", weight.scalar_type());
  TORCH_CHECK_VALUE(x.device() == weight.device(), op, ": input is on ", x.device(),
                    " but weight is on ", weight.device());
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.sym_size(-1) == weight.sym_size(1), op, ": input shape ",
                    x.sym_sizes(), " does not match weight shape ", weight.sym_sizes());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_TYPE(bias->scalar_type() == weight.scalar_type() &&
                         bias->device() == weight.device(),
                     op, ": bias (", bias->scalar_type(), ", ", bias->device(),
                     ") must match weight (", weight.scalar_type(), ", ", weight.device(), ")");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0), op,
                      ": bias shape ", bias->sym_sizes(), " must be (", weight.sym_size(0), ",)");
  }
}

inline MaskArgs mask_args(const char* op, c10::string_view mode_name, const at::Tensor& beta,
                          const at::Tensor& logits, const c10::optional<at::Tensor>& noise) {
  const int mode = parse_mode(op, mode_name);
  TORCH_CHECK(beta.numel() == 1 && beta.is_floating_point(), op,
              ": beta must be a one-element floating tensor, got shape ", beta.sizes(), " of ",
              beta.scalar_type());
  TORCH_CHECK(beta.device() == logits.device() || beta.device().is_cpu(), op, ": beta is on ",
              beta.device(), " but logits are on ", logits.device());
  const bool has_noise = noise.has_value() && noise->defined();
  TORCH_CHECK(has_noise == mode_is_sampled(mode), op, ": mode ", std::string(mode_name),
              has_noise ? " takes no noise key" : " needs a noise key [seed, stream]");
  at::Tensor key;
  if (has_noise) {
    TORCH_CHECK(noise->scalar_type() == at::kLong && noise->numel() == 2, op,
                ": noise must be an int64 tensor [seed, stream], got ", noise->sizes(), " of ",
                noise->scalar_type());
    key = noise->to(logits.device(), /*non_blocking=*/true).contiguous();
  }
  return {mode, beta, key};
}

#define SUBIND_DISPATCH_WEIGHT_AND_LOGITS(weight, logits, NAME, ...)    \
  AT_DISPATCH_FLOATING_TYPES_AND2(                                     \
      at::kHalf, at::kBFloat16, (weight).scalar_type(), NAME, [&] {    \
        using weight_t = scalar_t;                                      \
        AT_DISPATCH_FLOATING_TYPES((logits).scalar_type(), NAME, [&] { \
          using logit_t = scalar_t;                                     \
          __VA_ARGS__();                                                \
        });                                                             \
      })

// (w_eff, dtheta, ds) over flat operands; g undefined: a forward pass.  A
// `transient` W_eff is consumed within the op call (Kernels::transient_like:
// scratch on the CPU), never returned from it.
template <class Kernels>
TensorTriple run_mask_pass(const at::Tensor& g, const at::Tensor& theta,
                           const at::Tensor& s, const MaskArgs& args, bool need_weff,
                           bool need_weight_grad, bool need_logits_grad,
                           bool transient_weff = false, const L0Terms& l0 = {}) {
  at::Tensor w_eff = !need_weff   ? empty_marker(theta)
               : transient_weff ? Kernels::transient_like(theta)
                                : at::empty_like(theta);
  auto grad_w = need_weight_grad ? at::empty_like(theta) : empty_marker(theta);
  auto grad_s = need_logits_grad ? at::empty_like(s) : empty_marker(s);
  if (theta.numel() == 0 || !(need_weff || need_weight_grad || need_logits_grad ||
                             l0.sum.defined())) {
    return {w_eff, grad_w, grad_s};
  }
  const c10::OptionalDeviceGuard device_guard(theta.device());
  SUBIND_DISPATCH_WEIGHT_AND_LOGITS(theta, s, "subind mask pass", [&] {
    MaskPass<weight_t, logit_t> p;
    p.g = g.defined() ? g.data_ptr<weight_t>() : nullptr;
    p.theta = theta.data_ptr<weight_t>();
    p.s = s.data_ptr<logit_t>();
    p.grad_s = need_logits_grad ? grad_s.data_ptr<logit_t>() : nullptr;
    p.grad_theta = need_weight_grad ? grad_w.data_ptr<weight_t>() : nullptr;
    p.w_eff = need_weff ? w_eff.data_ptr<weight_t>() : nullptr;
    p.n = theta.numel();
    if (l0.sum.defined()) p.l0_sum = l0.sum.data_ptr<double>();
    if (l0.grad.defined() && need_logits_grad) p.grad_l0 = l0.grad.const_data_ptr<logit_t>();
    Kernels::template pass<weight_t, logit_t>(p, args);
  });
  return {w_eff, grad_w, grad_s};
}

// w_eff = theta ⊙ m(s)
template <class Kernels>
at::Tensor mask_weight(const at::Tensor& weight, const at::Tensor& logits,
                       const at::Tensor& beta, c10::string_view mode,
                       const c10::optional<at::Tensor>& noise) {
  const char* op = "subind::mask_weight";
  check_pair(op, weight, logits);
  const auto args = mask_args(op, mode, beta, logits, noise);
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  return std::get<0>(run_mask_pass<Kernels>(at::Tensor(), theta, s, args, true, false, false));
}

// (w_eff, dtheta, ds) from g = dL/dw_eff; ds only in a training mode.
template <class Kernels>
TensorTriple mask_weight_backward(const at::Tensor& grad_weff, const at::Tensor& weight,
                                  const at::Tensor& logits, const at::Tensor& beta,
                                  c10::string_view mode, bool need_weff, bool need_weight_grad,
                                  bool need_logits_grad, const c10::optional<at::Tensor>& noise) {
  const char* op = "subind::mask_weight_backward";
  check_pair(op, weight, logits);
  TORCH_CHECK(grad_weff.sizes() == weight.sizes(), op, ": grad shape ", grad_weff.sizes(),
              " != weight shape ", weight.sizes());
  const auto args = mask_args(op, mode, beta, logits, noise);
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  auto g = with_layout_of(grad_weff.to(theta.scalar_type()), theta);
  return run_mask_pass<Kernels>(g, theta, s, args, need_weff, need_weight_grad,
                                need_logits_grad && mode_is_training(args.mode));
}

// The weight side of a composed backward: (W_eff if need_x, dtheta, ds) from
// G_W = dL/dW_eff (undefined when neither weight gradient is wanted).  W_eff
// is transient: the caller consumes it before returning.  `l0.grad` adds the
// penalty's gradient to ds.
template <class Kernels>
TensorTriple weight_side(const at::Tensor& grad_w, const at::Tensor& weight,
                         const at::Tensor& logits, const MaskArgs& args, bool need_x,
                         bool need_weight, bool need_logits, const L0Terms& l0 = {}) {
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  if (!grad_w.defined()) {
    auto weff = std::get<0>(run_mask_pass<Kernels>(at::Tensor(), theta, s, args, need_x,
                                                   false, false, /*transient_weff=*/true));
    return {weff, empty_marker(weight), empty_marker(logits)};
  }
  auto g = with_layout_of(grad_w.to(theta.scalar_type()), theta);
  return run_mask_pass<Kernels>(g, theta, s, args, need_x, need_weight, need_logits,
                                /*transient_weff=*/true, l0);
}

// ---------------------------------------------------------------- linear
// y = x · W_effᵀ + b with W_eff formed whole (devices without a fused schedule).
template <class Kernels>
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight,
                          const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                          const at::Tensor& beta, c10::string_view mode,
                          const c10::optional<at::Tensor>& noise) {
  check_linear_operands("subind::masked_linear", x, weight, bias);
  return at::linear(x, mask_weight<Kernels>(weight, logits, beta, mode, noise), bias);
}

// (dx, dtheta, ds, db): G_W = Gᵀx, then one mask pass gives W_eff, dtheta, ds.
template <class Kernels>
TensorQuad linear_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                           const at::Tensor& logits, const at::Tensor& beta,
                           c10::string_view mode, std::array<bool, 4> needs,
                           const c10::optional<at::Tensor>& noise,
                           const c10::optional<at::Tensor>& grad_l0) {
  const auto args = mask_args("subind::masked_linear_backward", mode, beta, logits, noise);
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[3];
  const bool need_s = needs[2] && mode_is_training(args.mode);
  const int64_t n_out = weight.size(0), n_in = weight.size(1);
  auto g2 = grad.reshape({-1, n_out});
  auto x2 = x.reshape({-1, n_in});
  at::Tensor grad_w;
  if (need_w || need_s) {
    // In the weight's own layout, so the mask pass reads it without a copy.
    const bool transposed = weight.stride(0) == 1 && weight.stride(1) != 1;
    grad_w = transposed ? at::mm(x2.t(), g2).t() : at::mm(g2.t(), x2);
  }
  at::Tensor weff, gw, gs;
  std::tie(weff, gw, gs) = weight_side<Kernels>(grad_w, weight, logits, args, need_x, need_w,
                                                need_s, l0_backward(grad_l0, logits));
  auto gx = need_x ? at::_unsafe_view(at::mm(g2, weff), x.sizes()) : empty_marker(x);
  auto gb = need_b ? g2.sum(0) : empty_marker(grad);
  return {gx, gw, gs, gb};
}

// ---------------------------------------------------------------- convolution
inline std::vector<int64_t> zeros_for(const at::Tensor& weight) {
  return std::vector<int64_t>(weight.dim() - 2, 0);
}

// The convolution of W_eff, whose mask pass also sums the penalty when `l0.sum` is set.
template <class Kernels>
at::Tensor conv_of_masked_weight(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& beta, c10::string_view mode,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups,
                                 const c10::optional<at::Tensor>& noise, const L0Terms& l0) {
  const auto args = mask_args(op, mode, beta, logits, noise);
  if (l0.sum.defined()) check_l0_mode(op, args.mode);
  at::Tensor theta, s;
  std::tie(theta, s) = flat_operands(weight, logits);
  auto weff = std::get<0>(run_mask_pass<Kernels>(at::Tensor(), theta, s, args, true, false,
                                                 false, /*transient_weff=*/true, l0));
  return at::convolution(x, weff, bias, stride, padding, dilation, false, zeros_for(weight),
                         groups);
}

template <class Kernels>
at::Tensor conv_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
                        const c10::optional<at::Tensor>& bias, const at::Tensor& beta,
                        c10::string_view mode, at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation, int64_t groups,
                        const c10::optional<at::Tensor>& noise) {
  return conv_of_masked_weight<Kernels>("subind::masked_conv", x, weight, logits, bias, beta,
                                        mode, stride, padding, dilation, groups, noise, {});
}

// (y, the L0 penalty of the logits): one mask pass gives W_eff and the penalty.
template <class Kernels>
std::tuple<at::Tensor, at::Tensor> conv_forward_l0(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const c10::optional<at::Tensor>& bias, const at::Tensor& beta, c10::string_view mode,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const c10::optional<at::Tensor>& noise) {
  const auto l0 = l0_forward(logits);
  auto y = conv_of_masked_weight<Kernels>("subind::masked_conv_l0", x, weight, logits, bias,
                                          beta, mode, stride, padding, dilation, groups, noise,
                                          l0);
  return {y, l0_value(l0, logits)};
}

template <class Kernels>
TensorQuad conv_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                         const at::Tensor& logits, const at::Tensor& beta, c10::string_view mode,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups, std::array<bool, 4> needs,
                         const c10::optional<at::Tensor>& noise,
                         const c10::optional<at::Tensor>& grad_l0) {
  const auto args = mask_args("subind::masked_conv_backward", mode, beta, logits, noise);
  const bool need_x = needs[0], need_w = needs[1], need_b = needs[3];
  const bool need_s = needs[2] && mode_is_training(args.mode);
  const auto zeros = zeros_for(weight);
  const std::vector<int64_t> bias_sizes{weight.size(0)};
  const bool want_grad_w = need_w || need_s;
  at::Tensor grad_w, gb = empty_marker(grad);
  if (want_grad_w || need_b) {
    // dW and db do not read the weight's values, so theta stands in for W_eff.
    auto parts = at::convolution_backward(grad, x, weight, at::IntArrayRef(bias_sizes), stride,
                                          padding, dilation, false, zeros, groups,
                                          {false, want_grad_w, need_b});
    if (want_grad_w) grad_w = std::get<1>(parts);
    if (need_b) gb = std::get<2>(parts);
  }
  at::Tensor weff, gw, gs;
  std::tie(weff, gw, gs) = weight_side<Kernels>(grad_w, weight, logits, args, need_x, need_w,
                                                need_s, l0_backward(grad_l0, logits));
  at::Tensor gx = empty_marker(x);
  if (need_x) {
    gx = std::get<0>(at::convolution_backward(grad, x, weff, at::IntArrayRef(bias_sizes), stride,
                                              padding, dilation, false, zeros, groups,
                                              {true, false, false}))
             .contiguous();
  }
  return {gx, gw, gs, gb};
}

}  // namespace subind
