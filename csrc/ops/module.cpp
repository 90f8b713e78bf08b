// The Python module of the CPU extension.  Importing it loads the library,
// which registers the `subind` ops (schemas.cpp) and their kernels; the only
// thing it exports itself is the mask mode table and the hard-concrete
// stretch, so Python (subind_fast/ops/modes.py) spells the modes exactly as
// the kernels parse them.
#include <torch/extension.h>

#include "subind/mask_math.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "subind_fast compiled kernels: registers the torch.ops.subind operators";
  pybind11::tuple names(subind::kModeCount);
  for (int code = 0; code < subind::kModeCount; ++code) names[code] = subind::kModeNames[code];
  m.attr("MODE_NAMES") = names;
  m.attr("STRETCH") = subind::kStretch;
}
