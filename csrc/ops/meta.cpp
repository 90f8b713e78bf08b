// Meta kernels: the shapes, dtypes and strides of every op's outputs, with
// no data.  Fake tensors (torch.compile, torch.export, memory planning on
// the meta device) run these.  They allocate exactly as the device kernels
// do (subind::like_weight and contiguous activations), so a compiled graph
// and an eager call agree on layouts.
#include <torch/library.h>

#include "subind/mask_driver.h"

namespace {

using subind::empty_marker;
using subind::like_weight;

at::Tensor mask_weight_meta(const at::Tensor& weight, const at::Tensor& logits,
                            const at::Tensor& beta, c10::string_view mode,
                            const c10::optional<at::Tensor>& noise) {
  subind::check_pair("subind::mask_weight", weight, logits);
  subind::parse_mode("subind::mask_weight", mode);
  return like_weight(weight, logits, weight.scalar_type());
}

// (W_eff, ∂θ, ∂s) as a backward pass allocates them.
subind::TensorTriple weight_grads_meta(const at::Tensor& weight, const at::Tensor& logits,
                                       int mode, bool need_weff, bool need_weight,
                                       bool need_logits) {
  return {need_weff ? like_weight(weight, logits, weight.scalar_type()) : empty_marker(weight),
          need_weight ? like_weight(weight, logits, weight.scalar_type()) : empty_marker(weight),
          need_logits && subind::mode_is_training(mode)
              ? like_weight(weight, logits, logits.scalar_type())
              : empty_marker(logits)};
}

subind::TensorTriple mask_weight_backward_meta(const at::Tensor& grad_weff,
                                               const at::Tensor& weight,
                                               const at::Tensor& logits, const at::Tensor& beta,
                                               c10::string_view mode, bool need_weff,
                                               bool need_weight_grad, bool need_logits_grad,
                                               const c10::optional<at::Tensor>& noise) {
  const int code = subind::parse_mode("subind::mask_weight_backward", mode);
  return weight_grads_meta(weight, logits, code, need_weff, need_weight_grad, need_logits_grad);
}

at::Tensor masked_linear_meta(const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                              const at::Tensor& beta, c10::string_view mode,
                              const c10::optional<at::Tensor>& noise) {
  subind::check_linear_operands("subind::masked_linear", x, weight, bias);
  auto sizes = x.sym_sizes().vec();
  sizes.back() = weight.sym_size(0);
  return at::empty_symint(sizes, x.options());
}

// The penalty of a *_l0 op: a scalar in the logits' dtype.
std::tuple<at::Tensor, at::Tensor> with_penalty(const char* op, const at::Tensor& out,
                                                const at::Tensor& logits,
                                                c10::string_view mode) {
  subind::check_l0_mode(op, subind::parse_mode(op, mode));
  return {out, at::empty({}, logits.options())};
}

std::tuple<at::Tensor, at::Tensor> masked_linear_l0_meta(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const c10::optional<at::Tensor>& bias, const at::Tensor& beta, c10::string_view mode,
    const c10::optional<at::Tensor>& noise) {
  return with_penalty("subind::masked_linear_l0",
                      masked_linear_meta(x, weight, logits, bias, beta, mode, noise), logits,
                      mode);
}

subind::TensorQuad with_input_and_bias(const at::Tensor& x, const at::Tensor& weight,
                                       const at::Tensor& logits, c10::string_view mode,
                                       std::array<bool, 4> needs, const at::Tensor& grad) {
  const int code = subind::parse_mode("subind backward", mode);
  auto [weff, gw, gs] = weight_grads_meta(weight, logits, code, false, needs[1], needs[2]);
  return {needs[0] ? at::empty_symint(x.sym_sizes(), x.options()) : empty_marker(x), gw, gs,
          needs[3] ? at::empty_symint({weight.sym_size(0)}, grad.options()) : empty_marker(grad)};
}

subind::TensorQuad masked_linear_backward_meta(const at::Tensor& grad, const at::Tensor& x,
                                               const at::Tensor& weight,
                                               const at::Tensor& logits, const at::Tensor& beta,
                                               c10::string_view mode, std::array<bool, 4> needs,
                                               const c10::optional<at::Tensor>& noise,
                                               const c10::optional<at::Tensor>& grad_l0) {
  return with_input_and_bias(x, weight, logits, mode, needs, grad);
}

at::Tensor masked_conv_meta(const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& beta, c10::string_view mode,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, int64_t groups,
                            const c10::optional<at::Tensor>& noise) {
  return at::convolution(x, weight, bias, stride, padding, dilation, false,
                         subind::zeros_for(weight), groups);
}

std::tuple<at::Tensor, at::Tensor> masked_conv_l0_meta(
    const at::Tensor& x, const at::Tensor& weight, const at::Tensor& logits,
    const c10::optional<at::Tensor>& bias, const at::Tensor& beta, c10::string_view mode,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const c10::optional<at::Tensor>& noise) {
  return with_penalty("subind::masked_conv_l0",
                      masked_conv_meta(x, weight, logits, bias, beta, mode, stride, padding,
                                       dilation, groups, noise),
                      logits, mode);
}

subind::TensorQuad masked_conv_backward_meta(const at::Tensor& grad, const at::Tensor& x,
                                             const at::Tensor& weight, const at::Tensor& logits,
                                             const at::Tensor& beta, c10::string_view mode,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation, int64_t groups,
                                             std::array<bool, 4> needs,
                                             const c10::optional<at::Tensor>& noise,
                                             const c10::optional<at::Tensor>& grad_l0) {
  return with_input_and_bias(x, weight, logits, mode, needs, grad);
}

at::Tensor sigmoid_sum_meta(const at::Tensor& logits, const at::Tensor& beta) {
  return at::empty({}, logits.options());
}

at::Tensor sigmoid_sum_backward_meta(const at::Tensor& grad, const at::Tensor& logits,
                                     const at::Tensor& beta) {
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

void adamw_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                     const at::Tensor&, const at::Tensor&, double, double, double, double, double,
                     double, double) {}

void sgd_step_meta(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   double, double, double, double, bool, bool) {}

}  // namespace

TORCH_LIBRARY_IMPL(subind, Meta, m) {
  m.impl("mask_weight", &mask_weight_meta);
  m.impl("mask_weight_backward", &mask_weight_backward_meta);
  m.impl("masked_linear", &masked_linear_meta);
  m.impl("masked_linear_l0", &masked_linear_l0_meta);
  m.impl("masked_linear_backward", &masked_linear_backward_meta);
  m.impl("masked_conv", &masked_conv_meta);
  m.impl("masked_conv_l0", &masked_conv_l0_meta);
  m.impl("masked_conv_backward", &masked_conv_backward_meta);
  m.impl("sigmoid_sum", &sigmoid_sum_meta);
  m.impl("sigmoid_sum_backward", &sigmoid_sum_backward_meta);
  m.impl("adamw_step", &adamw_step_meta);
  m.impl("sgd_step", &sgd_step_meta);
}
