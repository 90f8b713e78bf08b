// The CPU loops for the "avx2" capability (cpu_loops.h); setup.py compiles this
// unit with that ISA's flags and nothing else includes it.
#define SUBIND_CPU_CAPABILITY avx2
#include "loops_impl.h"
