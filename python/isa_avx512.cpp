// CPU kernels for AVX-512 (F, BW, DQ, VL: x86-64-v4: Skylake-X, Ice Lake, Zen 4 and later), chosen
// at run time. 512-bit vectors and 4-row register blocks (32 vector registers).
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
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define DVE_ISA_NS isa_avx512
#define DVE_VECTOR_BYTES 64
#define DVE_MICRO_ROWS 4
#include "kernel_table_impl.h"
#pragma GCC pop_options
const dve_bind::KernelTable* dve_bind::kernels_avx512() { return dve_bind::isa_avx512::table("avx512"); }
#else
const dve_bind::KernelTable* dve_bind::kernels_avx512() { return nullptr; }
#endif
