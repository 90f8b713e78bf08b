// The CPU's element-wise loops, compiled once per x86-64 vector ISA and
// chosen once, at load, from the running CPU (capability.cpp).
//
// Each capability is its own translation unit (loops_<capability>.cpp, built
// by setup.py with that ISA's flags) that includes only ATen-free headers: an
// inline function the units shared (an ATen or c10 helper, say) would be
// compiled once per ISA and the linker would keep any one of the copies —
// possibly the AVX-512 one, in the path a pre-AVX-512 CPU runs.  So the loops
// name their element types themselves (HalfBits, BFloat16Bits: the 16-bit
// patterns of c10::Half and c10::BFloat16) and the host code (cpu_kernels.h,
// optim.cpp, mask_ops.cpp) keeps ATen: threads, dtypes, checks.
//
// Capabilities: "default" (baseline x86-64: SSE2), "avx2" (AVX2 + FMA + F16C),
// "avx512" (AVX-512 F/DQ/BW/VL at full width).  The environment variable
// SUBIND_CPU_CAPABILITY overrides the choice.
#pragma once

#include <cstdint>
#include <tuple>

#include "subind/mask_pass.h"
#include "subind/optim_math.h"

namespace subind_cpu {

// The bit patterns of IEEE binary16 and of bfloat16, as c10 stores them.
struct HalfBits {
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};

// beta, the mode and the hashed noise key as values; made once per op call.
template <typename logit_t>
struct MaskParams {
  int mode;
  logit_t beta;
  uint32_t key;
};

// Elements [begin, end) of one mask pass (subind/mask_driver.h states what a
// pass computes); returns Σp of the L0 penalty over them when the pass is a
// forward pass that carries it, else 0.
template <typename weight_t, typename logit_t>
using MaskRangeFn = double (*)(const subind::MaskPass<weight_t, logit_t>&,
                               const MaskParams<logit_t>&, int64_t begin, int64_t end);

// Σ sigmoid(beta * s[i]) over [begin, end), accumulated in double.
template <typename T>
using SigmoidSumFn = double (*)(const T* s, T beta, int64_t begin, int64_t end);

// out[i] = scale * sigmoid'(beta * s[i]) over [begin, end).
template <typename T>
using SigmoidSlopeFn = void (*)(const T* s, T beta, T scale, T* out, int64_t begin, int64_t end);

// The frozen-mask optimizer updates (subind/optim_math.h) over [begin, end);
// vmax / buf null when the optimizer keeps none, bits null when nothing is frozen.
template <typename T>
using AdamWRangeFn = void (*)(T* p, const T* g, T* m, T* v, T* vmax, const uint8_t* bits,
                              const subind::AdamWScalars& c, int64_t begin, int64_t end);
template <typename T>
using SgdRangeFn = void (*)(T* p, const T* g, T* buf, const uint8_t* bits,
                            const subind::SGDScalars& c, int64_t begin, int64_t end);

// One capability's loops, looked up by type: std::get<MaskRangeFn<float, float>>(mask_range).
struct CpuLoops {
  const char* capability;
  std::tuple<MaskRangeFn<float, float>, MaskRangeFn<float, double>, MaskRangeFn<double, float>,
             MaskRangeFn<double, double>, MaskRangeFn<HalfBits, float>,
             MaskRangeFn<HalfBits, double>, MaskRangeFn<BFloat16Bits, float>,
             MaskRangeFn<BFloat16Bits, double>>
      mask_range;
  std::tuple<SigmoidSumFn<float>, SigmoidSumFn<double>> sigmoid_sum;
  std::tuple<SigmoidSlopeFn<float>, SigmoidSlopeFn<double>> sigmoid_slope;
  std::tuple<AdamWRangeFn<float>, AdamWRangeFn<double>> adamw;
  std::tuple<SgdRangeFn<float>, SgdRangeFn<double>> sgd;
};

// Each capability's table, defined in its own unit (loops_<capability>.cpp).
namespace isa_default {
const CpuLoops& loops();
}
#if defined(SUBIND_HAVE_X86_LOOPS)
namespace isa_avx2 {
const CpuLoops& loops();
}
namespace isa_avx512 {
const CpuLoops& loops();
}
#endif

// The loops of the chosen capability: the best the CPU runs, or
// SUBIND_CPU_CAPABILITY's.  Chosen on the first call; an override naming an
// unknown capability, or one this CPU lacks, throws (naming the variable).
const CpuLoops& active_loops();

// The capabilities the running CPU can execute, best last.
const char* const* runnable_capabilities(int* count);

}  // namespace subind_cpu
