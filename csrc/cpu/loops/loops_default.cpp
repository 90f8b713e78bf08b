// The CPU loops for the "default" capability (cpu_loops.h); setup.py compiles this
// unit with that ISA's flags and nothing else includes it.
#define SUBIND_CPU_CAPABILITY default
#include "loops_impl.h"
