// Per-element optimizer updates with a packed frozen mask, shared by the CPU
// (csrc/cpu/optim.cpp) kernels and any device code.
//
// Frozen mask: bit i of byte i/8 (least significant bit first) is 1 when
// element i is frozen.  A frozen element keeps its parameter and every state
// value bit-for-bit: the update is computed and then discarded by a select,
// so no weight decay, momentum or moment decay ever reaches it.
//
// AdamW (torch.optim.AdamW, amsgrad optional), step t (1-based):
//   p  ← p·(1 − lr·wd)
//   m  ← β1·m + (1 − β1)·g
//   v  ← β2·v + (1 − β2)·g²
//   v̂  ← max(v̂, v)                      (amsgrad; else v̂ = v)
//   p  ← p − (lr / (1 − β1ᵗ)) · m / (√v̂ / √(1 − β2ᵗ) + eps)
// SGD (torch.optim.SGD):
//   g  ← g + wd·p
//   b  ← g on the first step, else μ·b + (1 − dampening)·g   (μ ≠ 0)
//   g  ← g + μ·b (nesterov) or b
//   p  ← p − lr·g
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "subind/mask_math.h"

namespace subind {

SUBIND_HD bool is_frozen(const uint8_t* bits, int64_t i) {
  return bits != nullptr && ((bits[i >> 3] >> (i & 7)) & 1);
}

// frozen ? old : updated, as a select on the bit patterns.  Bit-exact for the
// frozen value, and written so the CPU loop stores every lane unconditionally:
// with a plain ?: GCC emits masked stores, which made the step ~3x slower.
template <typename T>
SUBIND_HD T keep_if_frozen(bool frozen, T old, T updated) {
#if defined(__CUDA_ARCH__)
  return frozen ? old : updated;
#else
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
  Bits a, b;
  std::memcpy(&a, &old, sizeof(T));
  std::memcpy(&b, &updated, sizeof(T));
  const Bits keep = Bits(0) - Bits(frozen);  // all ones when frozen
  const Bits out = (a & keep) | (b & ~keep);
  T result;
  std::memcpy(&result, &out, sizeof(T));
  return result;
#endif
}

struct AdamWScalars {
  float lr, beta1, beta2, eps, weight_decay;
  float step_size;          // lr / (1 − β1ᵗ)
  float inv_sqrt_bias2;     // 1 / √(1 − β2ᵗ)
};

template <typename T>
SUBIND_HD void adamw_element(T& p, T g, T& m, T& v, T* vmax, const AdamWScalars& c,
                             bool frozen) {
  const T p_decayed = p * (T(1) - T(c.lr) * T(c.weight_decay));
  const T m_new = T(c.beta1) * m + (T(1) - T(c.beta1)) * g;
  const T v_new = T(c.beta2) * v + (T(1) - T(c.beta2)) * g * g;
  T v_used = v_new;
  if (vmax != nullptr) {
    const T vmax_new = *vmax > v_new ? *vmax : v_new;
    v_used = vmax_new;
    *vmax = keep_if_frozen(frozen, *vmax, vmax_new);
  }
  const T denom = ::sqrt(v_used) * T(c.inv_sqrt_bias2) + T(c.eps);
  const T p_new = p_decayed - T(c.step_size) * m_new / denom;
  p = keep_if_frozen(frozen, p, p_new);
  m = keep_if_frozen(frozen, m, m_new);
  v = keep_if_frozen(frozen, v, v_new);
}

struct SGDScalars {
  float lr, momentum, dampening, weight_decay;
  bool nesterov, first_step;
};

template <typename T>
SUBIND_HD void sgd_element(T& p, T g, T* buf, const SGDScalars& c, bool frozen) {
  g = g + T(c.weight_decay) * p;
  if (buf != nullptr) {
    const T b_new = c.first_step ? g : T(c.momentum) * *buf + (T(1) - T(c.dampening)) * g;
    *buf = keep_if_frozen(frozen, *buf, b_new);
    g = c.nesterov ? g + T(c.momentum) * b_new : b_new;
  }
  const T p_new = p - T(c.lr) * g;
  p = keep_if_frozen(frozen, p, p_new);
}

}  // namespace subind
