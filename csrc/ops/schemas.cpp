// The op schemas of the `subind` namespace, defined once.  Kernels are
// registered per dispatch key elsewhere: CPU (csrc/cpu), CUDA (csrc/cuda, and
// the Triton launchers from Python where those are the faster choice), Meta
// (meta.cpp: shapes for fake tensors and torch.compile), Autograd
// (autograd.cpp) and Autocast (autocast.cpp).
//
// Math, with m = σ(β·s) | 1[s>0] | 1 | a sampled mask (mode) and G = ∂L/∂y:
//   mask_weight            W_eff = θ ⊙ m
//   masked_linear          y = x·W_effᵀ + b
//                          ∂x = G·W_eff, ∂θ = (Gᵀx) ⊙ m, ∂s = (Gᵀx) ⊙ θ ⊙ β·slope, ∂b = Σ G
//   masked_conv            the same with the convolution as the GEMM
//   masked_linear_l0,      (y, Σ p(s)): the op and the L0 penalty of its logits from
//   masked_conv_l0         the one mask pass (training modes; p per mode in
//                          subind/mask_math.h: σ(βs) soft, P(m≠0) concrete, s gumbel);
//                          their backward is the op's with grad_l0 = ∂L/∂penalty,
//                          which adds grad_l0·∂p/∂s to ∂s in the same pass
//   sigmoid_sum            Σ σ(β·s), with ∂s = β·m(1−m)  (the L0 penalty on its own)
//   adamw_step, sgd_step   in-place optimizer updates of the elements not frozen
// `*_backward` take the `need_*` / `needs` flags (x, weight, logits, bias)
// and return an empty [0] tensor for each gradient not asked for.
// `mode` is a mask mode's name (subind/mask_math.h); `noise` is the int64 key
// [seed, stream] of a sampled mode (concrete, gumbel) and absent otherwise.
// β is a one-element tensor, so annealing it changes no value torch.compile
// guards on.
#include <torch/library.h>

TORCH_LIBRARY(subind, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("mask_weight(Tensor weight, Tensor logits, Tensor beta, str mode, Tensor? noise=None)"
        " -> Tensor", tags);
  m.def("mask_weight_backward(Tensor grad_weff, Tensor weight, Tensor logits, Tensor beta, "
        "str mode, bool need_weff, bool need_weight_grad, bool need_logits_grad, "
        "Tensor? noise=None) -> (Tensor, Tensor, Tensor)", tags);
  m.def("masked_linear(Tensor x, Tensor weight, Tensor logits, Tensor? bias, Tensor beta, "
        "str mode, Tensor? noise=None) -> Tensor", tags);
  m.def("masked_linear_l0(Tensor x, Tensor weight, Tensor logits, Tensor? bias, Tensor beta, "
        "str mode, Tensor? noise=None) -> (Tensor, Tensor)", tags);
  m.def("masked_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor logits, "
        "Tensor beta, str mode, bool[4] needs, Tensor? noise=None, Tensor? grad_l0=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)", tags);
  m.def("masked_conv(Tensor x, Tensor weight, Tensor logits, Tensor? bias, Tensor beta, "
        "str mode, int[] stride, int[] padding, int[] dilation, int groups, "
        "Tensor? noise=None) -> Tensor", tags);
  m.def("masked_conv_l0(Tensor x, Tensor weight, Tensor logits, Tensor? bias, Tensor beta, "
        "str mode, int[] stride, int[] padding, int[] dilation, int groups, "
        "Tensor? noise=None) -> (Tensor, Tensor)", tags);
  m.def("masked_conv_backward(Tensor grad, Tensor x, Tensor weight, Tensor logits, "
        "Tensor beta, str mode, int[] stride, int[] padding, int[] dilation, int groups, "
        "bool[4] needs, Tensor? noise=None, Tensor? grad_l0=None) "
        "-> (Tensor, Tensor, Tensor, Tensor)", tags);
  m.def("sigmoid_sum(Tensor logits, Tensor beta) -> Tensor", tags);
  m.def("sigmoid_sum_backward(Tensor grad, Tensor logits, Tensor beta) -> Tensor", tags);
  m.def("adamw_step(Tensor(a!) param, Tensor grad, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
        "Tensor(d!) max_exp_avg_sq, Tensor frozen_bits, float lr, float beta1, float beta2, "
        "float eps, float weight_decay, float step_size, float inv_sqrt_bias2) -> ()", tags);
  m.def("sgd_step(Tensor(a!) param, Tensor grad, Tensor(b!) momentum_buffer, "
        "Tensor frozen_bits, float lr, float momentum, float dampening, float weight_decay, "
        "bool nesterov, bool first_step) -> ()", tags);
}
