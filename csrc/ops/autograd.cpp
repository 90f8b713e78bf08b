// Autograd kernels of the differentiable ops, in C++ (the route torchvision's
// csrc/ops/autograd takes): the forward runs the op below autograd and saves
// only its inputs (W_eff and σ(β·s) are recomputed in backward, so nothing
// weight-sized is kept between the passes); the backward calls the op's
// `*_backward` through the dispatcher, so torch.compile traces it as one op.
// Gradients (schemas.cpp has the formulas): ∂x, ∂θ, ∂s, ∂b; none for β, the
// mode, the convolution geometry or the noise key.  A gradient is computed
// only for an input that required grad at forward time.  The *_l0 forms
// (kL0) also return the L0 penalty; its gradient reaches the backward op as
// grad_l0, which folds it into ∂s in the same pass.
#include <torch/autograd.h>
#include <torch/library.h>

#include "subind/op_handle.h"

#include "subind/mask_driver.h"

namespace {

using subind::op_handle;

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool requires_grad(const c10::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() && t->requires_grad();
}

c10::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// The `needs` flags (x, weight, logits, bias) as saved at forward time,
// packed in one integer, and the mode as its name: each op parses the name
// once, in its own kernel, and the backward op decides whether the mode
// trains the logits (a mode that does not returns ∂s as an empty marker).
void save_needs(AutogradContext* ctx, std::array<bool, 4> needs, c10::string_view mode) {
  ctx->saved_data["needs"] = static_cast<int64_t>(needs[0] | needs[1] << 1 | needs[2] << 2 |
                                                  needs[3] << 3);
  ctx->saved_data["mode"] = std::string(mode);
}

std::array<bool, 4> saved_needs(AutogradContext* ctx) {
  const int64_t bits = ctx->saved_data["needs"].toInt();
  return {(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0};
}

c10::string_view saved_mode(AutogradContext* ctx) {
  return ctx->saved_data["mode"].toStringRef();
}

at::Tensor if_needed(bool need, const at::Tensor& t) { return need ? t : at::Tensor(); }

// ∂s when the logits needed one and the mode gave one (not an empty marker).
at::Tensor logits_grad(bool need, const at::Tensor& grad_s, const at::Tensor& logits) {
  return need && grad_s.sizes() == logits.sizes() ? grad_s : at::Tensor();
}

// ------------------------------------------------------------------ mask_weight
using MaskWeightBackward = subind::TensorTriple(const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&,
                                                c10::string_view, bool, bool, bool,
                                                const c10::optional<at::Tensor>&);
using MaskWeightSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 c10::string_view, const c10::optional<at::Tensor>&);

class MaskWeightFunction : public torch::autograd::Function<MaskWeightFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight,
                            const at::Tensor& logits, const at::Tensor& beta,
                            c10::string_view mode, const c10::optional<at::Tensor>& noise) {
    static auto op = op_handle<MaskWeightSig>("subind::mask_weight");
    save_needs(ctx, {false, weight.requires_grad(), logits.requires_grad(), false}, mode);
    ctx->save_for_backward({weight, logits, beta, noise.value_or(at::Tensor())});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(weight, logits, beta, mode, noise);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<MaskWeightBackward>("subind::mask_weight_backward");
    const auto saved = ctx->get_saved_variables();
    const auto needs = saved_needs(ctx);
    auto [weff, gw, gs] = op.call(grads[0], saved[0], saved[1], saved[2],
                                  saved_mode(ctx), false, needs[1],
                                  needs[2], optional_of(saved[3]));
    return {if_needed(needs[1], gw), logits_grad(needs[2], gs, saved[1]), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor mask_weight_autograd(const at::Tensor& weight, const at::Tensor& logits,
                                const at::Tensor& beta, c10::string_view mode,
                                const c10::optional<at::Tensor>& noise) {
  return MaskWeightFunction::apply(weight, logits, beta, mode, noise);
}

// The penalty's incoming gradient, if the loss used it; and the output's,
// zeros when only the penalty was used (the backward op needs a G).
c10::optional<at::Tensor> penalty_grad(const variable_list& grads, bool l0) {
  if (!l0 || grads.size() < 2 || !grads[1].defined()) return c10::nullopt;
  return grads[1];
}

at::Tensor output_grad(AutogradContext* ctx, const variable_list& grads) {
  if (grads[0].defined()) return grads[0];
  return at::zeros(ctx->saved_data["out_sizes"].toIntVector(),
                   ctx->get_saved_variables()[0].options());
}

template <bool kL0>
using Result = subind::ForwardResult<kL0>;

template <bool kL0>
variable_list as_outputs(const Result<kL0>& result) {
  if constexpr (kL0) {
    return {std::get<0>(result), std::get<1>(result)};
  } else {
    return {result};
  }
}

template <bool kL0>
Result<kL0> from_outputs(const variable_list& out) {
  if constexpr (kL0) {
    return {out[0], out[1]};
  } else {
    return out[0];
  }
}

// ---------------------------------------------------------------- masked_linear
using LinearBackwardSig = subind::TensorQuad(const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&, c10::string_view,
                                             std::array<bool, 4>,
                                             const c10::optional<at::Tensor>&,
                                             const c10::optional<at::Tensor>&);

template <bool kL0>
class MaskedLinearFunction : public torch::autograd::Function<MaskedLinearFunction<kL0>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& logits,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& beta,
                               c10::string_view mode, const c10::optional<at::Tensor>& noise) {
    save_needs(ctx, {x.requires_grad(), weight.requires_grad(), logits.requires_grad(),
                     requires_grad(bias)}, mode);
    ctx->save_for_backward({x, weight, logits, beta, noise.value_or(at::Tensor())});
    at::AutoDispatchBelowADInplaceOrView guard;
    if constexpr (kL0) {
      // An unused output's gradient arrives undefined, not as zeros: an
      // unused penalty then costs the backward pass nothing.
      ctx->set_materialize_grads(false);
      static auto op = op_handle<subind::LinearForwardSig<true>>("subind::masked_linear_l0");
      auto out = op.call(x, weight, logits, bias, beta, mode, noise);
      ctx->saved_data["out_sizes"] = std::get<0>(out).sizes().vec();
      return as_outputs<true>(out);
    } else {
      static auto op = op_handle<subind::LinearForwardSig<false>>("subind::masked_linear");
      return {op.call(x, weight, logits, bias, beta, mode, noise)};
    }
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<LinearBackwardSig>("subind::masked_linear_backward");
    const auto saved = ctx->get_saved_variables();
    const auto needs = saved_needs(ctx);
    auto [gx, gw, gs, gb] = op.call(kL0 ? output_grad(ctx, grads) : grads[0], saved[0], saved[1],
                                    saved[2], saved[3], saved_mode(ctx), needs,
                                    optional_of(saved[4]), penalty_grad(grads, kL0));
    return {if_needed(needs[0], gx), if_needed(needs[1], gw), logits_grad(needs[2], gs, saved[2]),
            if_needed(needs[3], gb), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <bool kL0>
Result<kL0> masked_linear_autograd(const at::Tensor& x, const at::Tensor& weight,
                                   const at::Tensor& logits,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& beta,
                                   c10::string_view mode,
                                   const c10::optional<at::Tensor>& noise) {
  return from_outputs<kL0>(
      MaskedLinearFunction<kL0>::apply(x, weight, logits, bias, beta, mode, noise));
}

// ------------------------------------------------------------------ masked_conv
using ConvBackwardSig = subind::TensorQuad(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, c10::string_view, at::IntArrayRef,
                                           at::IntArrayRef, at::IntArrayRef, int64_t,
                                           std::array<bool, 4>,
                                           const c10::optional<at::Tensor>&,
                                           const c10::optional<at::Tensor>&);

template <bool kL0>
class MaskedConvFunction : public torch::autograd::Function<MaskedConvFunction<kL0>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x,
                               const at::Tensor& weight, const at::Tensor& logits,
                               const c10::optional<at::Tensor>& bias, const at::Tensor& beta,
                               c10::string_view mode, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               const c10::optional<at::Tensor>& noise) {
    save_needs(ctx, {x.requires_grad(), weight.requires_grad(), logits.requires_grad(),
                     requires_grad(bias)}, mode);
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->save_for_backward({x, weight, logits, beta, noise.value_or(at::Tensor())});
    at::AutoDispatchBelowADInplaceOrView guard;
    if constexpr (kL0) {
      ctx->set_materialize_grads(false);
      static auto op = op_handle<subind::ConvForwardSig<true>>("subind::masked_conv_l0");
      auto out = op.call(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                         noise);
      ctx->saved_data["out_sizes"] = std::get<0>(out).sizes().vec();
      return as_outputs<true>(out);
    } else {
      static auto op = op_handle<subind::ConvForwardSig<false>>("subind::masked_conv");
      return {op.call(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                      noise)};
    }
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<ConvBackwardSig>("subind::masked_conv_backward");
    const auto saved = ctx->get_saved_variables();
    const auto needs = saved_needs(ctx);
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    auto [gx, gw, gs, gb] = op.call(kL0 ? output_grad(ctx, grads) : grads[0], saved[0],
                                    saved[1], saved[2], saved[3], saved_mode(ctx), stride,
                                    padding, dilation, ctx->saved_data["groups"].toInt(), needs,
                                    optional_of(saved[4]), penalty_grad(grads, kL0));
    return {if_needed(needs[0], gx), if_needed(needs[1], gw), logits_grad(needs[2], gs, saved[2]),
            if_needed(needs[3], gb), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <bool kL0>
Result<kL0> masked_conv_autograd(const at::Tensor& x, const at::Tensor& weight,
                                 const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                 const at::Tensor& beta, c10::string_view mode,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation, int64_t groups,
                                 const c10::optional<at::Tensor>& noise) {
  return from_outputs<kL0>(MaskedConvFunction<kL0>::apply(x, weight, logits, bias, beta, mode,
                                                          stride, padding, dilation, groups,
                                                          noise));
}

// ------------------------------------------------------------------ sigmoid_sum
using SigmoidSumSig = at::Tensor(const at::Tensor&, const at::Tensor&);
using SigmoidSumBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&);

class SigmoidSumFunction : public torch::autograd::Function<SigmoidSumFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logits,
                            const at::Tensor& beta) {
    static auto op = op_handle<SigmoidSumSig>("subind::sigmoid_sum");
    ctx->save_for_backward({logits, beta});
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(logits, beta);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = op_handle<SigmoidSumBackwardSig>("subind::sigmoid_sum_backward");
    const auto saved = ctx->get_saved_variables();
    return {op.call(grads[0], saved[0], saved[1]), at::Tensor()};
  }
};

at::Tensor sigmoid_sum_autograd(const at::Tensor& logits, const at::Tensor& beta) {
  return SigmoidSumFunction::apply(logits, beta);
}

}  // namespace

TORCH_LIBRARY_IMPL(subind, Autograd, m) {
  m.impl("mask_weight", &mask_weight_autograd);
  m.impl("masked_linear", &masked_linear_autograd<false>);
  m.impl("masked_linear_l0", &masked_linear_autograd<true>);
  m.impl("masked_conv", &masked_conv_autograd<false>);
  m.impl("masked_conv_l0", &masked_conv_autograd<true>);
  m.impl("sigmoid_sum", &sigmoid_sum_autograd);
}
