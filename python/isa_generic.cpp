// CPU kernels for any x86-64 (SSE2) or other CPU: the baseline of the compiler flags.
#include <type_traits>

#define DVE_ISA_NS isa_generic
#include "kernel_table_impl.h"

const dve_bind::KernelTable* dve_bind::kernels_generic() { return dve_bind::isa_generic::table("generic"); }
