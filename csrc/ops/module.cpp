// The Python module of the CPU extension.  Importing it loads the library,
// which registers the `subind` ops (schemas.cpp) and their kernels.  It
// exports the mask mode table and the hard-concrete stretch, so Python
// (subind_fast/ops/modes.py) spells the modes exactly as the kernels parse
// them, and which CPU capability's loops run (csrc/cpu/loops/cpu_loops.h).
#include <torch/extension.h>

#include "../cpu/loops/cpu_loops.h"
#include "subind/mask_math.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast compiled kernels: registers the torch.ops.subind operators";
  pybind11::tuple names(subind::kModeCount);
  for (int code = 0; code < subind::kModeCount; ++code) names[code] = subind::kModeNames[code];
  m.attr("MODE_NAMES") = names;
  m.attr("STRETCH") = subind::kStretch;
  m.def("cpu_capability", [] { return std::string(subind_cpu::active_loops().capability); },
        "The CPU capability whose loops run (chosen on the first call; SUBIND_CPU_CAPABILITY "
        "overrides).");
  m.def("runnable_cpu_capabilities", [] {
    int count = 0;
    const char* const* names = subind_cpu::runnable_capabilities(&count);
    pybind11::tuple out(count);
    for (int i = 0; i < count; ++i) out[i] = names[i];
    return out;
  }, "The CPU capabilities this build has and the running CPU executes, worst first.");
}
