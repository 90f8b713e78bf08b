// A typed handle to a `subind` op, for kernels that call another op through
// the dispatcher (autograd's backward, autocast's redispatch).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>
#include <type_traits>

namespace subind {

// A forward op's result: y, or (y, penalty) for its *_l0 form.
template <bool kL0>
using ForwardResult = std::conditional_t<kL0, std::tuple<at::Tensor, at::Tensor>, at::Tensor>;

// The signatures of masked_linear(_l0) and masked_conv(_l0) (csrc/ops/schemas.cpp).
template <bool kL0>
using LinearForwardSig = ForwardResult<kL0>(const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const c10::optional<at::Tensor>&,
                                            const at::Tensor&, c10::string_view,
                                            const c10::optional<at::Tensor>&);
template <bool kL0>
using ConvForwardSig = ForwardResult<kL0>(const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const c10::optional<at::Tensor>&,
                                          const at::Tensor&, c10::string_view, at::IntArrayRef,
                                          at::IntArrayRef, at::IntArrayRef, int64_t,
                                          const c10::optional<at::Tensor>&);

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace subind
