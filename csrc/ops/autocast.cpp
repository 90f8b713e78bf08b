// The autocast rule of masked_linear and masked_conv (and their *_l0 forms,
// whose penalty is the logits' and stays fp32), as F.linear / F.conv* follow it: under torch.autocast the input, θ and the bias are cast to the
// autocast dtype (floating tensors other than float64), the logits and β
// never (the mask math stays fp32); then the op runs with autocast off.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "subind/op_handle.h"

namespace {

using subind::op_handle;

template <bool kL0>
using Result = subind::ForwardResult<kL0>;

template <c10::DeviceType kDevice, c10::DispatchKey kKey, bool kL0>
Result<kL0> masked_linear_autocast(const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                  const at::Tensor& beta, c10::string_view mode,
                                  const c10::optional<at::Tensor>& noise) {
  static auto op = op_handle<subind::LinearForwardSig<kL0>>(kL0 ? "subind::masked_linear_l0"
                                                                 : "subind::masked_linear");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  const auto dtype = at::autocast::get_autocast_dtype(kDevice);
  return op.call(at::autocast::cached_cast(dtype, x, kDevice),
                 at::autocast::cached_cast(dtype, weight, kDevice), logits,
                 at::autocast::cached_cast(dtype, bias, kDevice), beta, mode, noise);
}

template <c10::DeviceType kDevice, c10::DispatchKey kKey, bool kL0>
Result<kL0> masked_conv_autocast(const at::Tensor& x, const at::Tensor& weight,
                                const at::Tensor& logits, const c10::optional<at::Tensor>& bias,
                                const at::Tensor& beta, c10::string_view mode,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups,
                                const c10::optional<at::Tensor>& noise) {
  static auto op = op_handle<subind::ConvForwardSig<kL0>>(kL0 ? "subind::masked_conv_l0"
                                                               : "subind::masked_conv");
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  const auto dtype = at::autocast::get_autocast_dtype(kDevice);
  return op.call(at::autocast::cached_cast(dtype, x, kDevice),
                 at::autocast::cached_cast(dtype, weight, kDevice), logits,
                 at::autocast::cached_cast(dtype, bias, kDevice), beta, mode, stride, padding,
                 dilation, groups, noise);
}

}  // namespace

template <c10::DeviceType kDevice, c10::DispatchKey kKey>
void register_autocast(torch::Library& m) {
  m.impl("masked_linear", &masked_linear_autocast<kDevice, kKey, false>);
  m.impl("masked_linear_l0", &masked_linear_autocast<kDevice, kKey, true>);
  m.impl("masked_conv", &masked_conv_autocast<kDevice, kKey, false>);
  m.impl("masked_conv_l0", &masked_conv_autocast<kDevice, kKey, true>);
}

TORCH_LIBRARY_IMPL(subind, AutocastCPU, m) {
  register_autocast<c10::DeviceType::CPU, c10::DispatchKey::AutocastCPU>(m);
}

TORCH_LIBRARY_IMPL(subind, AutocastCUDA, m) {
  register_autocast<c10::DeviceType::CUDA, c10::DispatchKey::AutocastCUDA>(m);
}
