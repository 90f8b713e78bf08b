// A typed handle to a `subind` op, for kernels that call another op through
// the dispatcher (autograd's backward, autocast's redispatch).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace subind {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace subind
