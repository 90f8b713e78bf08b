// Which capability's loops run (cpu_loops.h): the best the running CPU
// executes — asked of cpuid, which also checks that the OS saves the vector
// registers — unless SUBIND_CPU_CAPABILITY names one.  Compiled for the
// baseline ISA, like everything outside the per-capability units.
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu_loops.h"

namespace subind_cpu {
namespace {

constexpr const char* kOverride = "SUBIND_CPU_CAPABILITY";

struct Capability {
  const char* name;
  const CpuLoops& (*loops)();
  bool (*runs_here)();
};

bool always() { return true; }

#if defined(SUBIND_HAVE_X86_LOOPS)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif

// Worst first.
constexpr Capability kCapabilities[] = {
    {"default", &isa_default::loops, &always},
#if defined(SUBIND_HAVE_X86_LOOPS)
    {"avx2", &isa_avx2::loops, &has_avx2},
    {"avx512", &isa_avx512::loops, &has_avx512},
#endif
};
constexpr int kCount = sizeof(kCapabilities) / sizeof(kCapabilities[0]);

std::string known_names() {
  std::string names;
  for (const auto& c : kCapabilities) names += std::string(names.empty() ? "" : ", ") + c.name;
  return names;
}

std::string runnable_names() {
  std::string names;
  for (const auto& c : kCapabilities) {
    if (c.runs_here()) names += std::string(names.empty() ? "" : ", ") + c.name;
  }
  return names;
}

const CpuLoops& choose() {
  const char* asked = std::getenv(kOverride);
  if (asked == nullptr || *asked == '\0') {
    for (int i = kCount - 1; i >= 0; --i) {
      if (kCapabilities[i].runs_here()) return kCapabilities[i].loops();
    }
  }
  for (const auto& c : kCapabilities) {
    if (std::strcmp(asked, c.name) != 0) continue;
    TORCH_CHECK(c.runs_here(), kOverride, "=", asked, ": this CPU cannot run the ", asked,
                " loops; it runs: ", runnable_names());
    return c.loops();
  }
  TORCH_CHECK(false, kOverride, "=", asked, " is not a CPU capability of this build; choose one "
              "of: ", known_names(), " (or unset it for the best this CPU runs)");
}

}  // namespace

const CpuLoops& active_loops() {
  static const CpuLoops& chosen = choose();
  return chosen;
}

const char* const* runnable_capabilities(int* count) {
  static const char* names[kCount];
  static const int n = [] {
    int k = 0;
    for (const auto& c : kCapabilities) {
      if (c.runs_here()) names[k++] = c.name;
    }
    return k;
  }();
  *count = n;
  return names;
}

}  // namespace subind_cpu
