// CPU kernels for AVX2 + FMA (x86-64-v3: Haswell, Zen and later), chosen at run time.
// The standard headers come first, compiled for the baseline; only the kernels get the target.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernel_table.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define DVE_ISA_NS isa_avx2
#define DVE_VECTOR_BYTES 32
#define DVE_MICRO_ROWS 2
#include "kernel_table_impl.h"
#pragma GCC pop_options
const dve_bind::KernelTable* dve_bind::kernels_avx2() { return dve_bind::isa_avx2::table("avx2"); }
#else
const dve_bind::KernelTable* dve_bind::kernels_avx2() { return nullptr; }
#endif
