// One element-wise mask pass as the device loops see it: plain pointers and
// sizes, no ATen, so the CPU loops compiled once per vector ISA
// (csrc/cpu/loops) can take it without pulling ATen's inline code into
// their translation units.  The host driver (mask_driver.h) fills it.
#pragma once

#include <cstdint>

namespace subind {

template <typename weight_t, typename logit_t>
struct MaskPass {
  const weight_t* g = nullptr;  // dL/dw_eff; null in a forward pass
  const weight_t* theta = nullptr;
  const logit_t* s = nullptr;
  logit_t* grad_s = nullptr;  // outputs: null where not wanted
  weight_t* grad_theta = nullptr;
  weight_t* w_eff = nullptr;
  int64_t n = 0;
  int64_t offset = 0;  // the noise index of element 0
  // The L0 penalty's share of the pass, on the pass's device: a forward pass
  // adds sum(p) to *l0_sum; a backward pass (grad_s set) adds *grad_l0 * dp/ds.
  double* l0_sum = nullptr;
  const logit_t* grad_l0 = nullptr;
};

}  // namespace subind
