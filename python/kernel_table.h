// The table of compiled CPU kernels for one instruction set (torch-free).
//
// csrc/ kernels are templates; python/isa_<name>.cpp instantiate them once per instruction set
// (generic x86-64 / SSE2, AVX2 + FMA, AVX-512) inside `#pragma GCC target`, each in a namespace of
// its own, and expose them through this table of plain function pointers. bindings.cpp picks the
// best table the running CPU supports (or the one named by DVE_KERNELS_ISA), so one binary is
// portable and still uses the wide vector units where they exist.
#pragma once

#include <cstdint>

namespace dve_bind {

// Storage dtype of the feature tensors. Coordinates, rows and grad_rows are float64 for f64
// features and float32 otherwise; lse is always float64 (see csrc/common.h, split_lse).
enum class Storage : int { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

struct KernelTable {
  const char* isa;
  void (*exchange_forward)(Storage, const void* query, const void* aux, void* out, void* lse, std::int64_t batch,
                           std::int64_t n, std::int64_t m, std::int64_t channels, double scale, int threads);
  void (*exchange_backward)(Storage, const void* grad_out, const void* query, const void* aux, const void* out,
                            const void* lse, void* grad_query, void* grad_aux, std::int64_t batch, std::int64_t n,
                            std::int64_t m, std::int64_t channels, double scale, int threads);
  void (*warp_loss_forward)(Storage, const void* src, const void* tgt, const void* src_xy, const void* tgt_xy,
                            void* rows, void* lse, std::int64_t batch, std::int64_t n, std::int64_t m,
                            std::int64_t channels, double pow, double scale, int threads);
  void (*warp_loss_backward)(Storage, const void* grad_rows, const void* src, const void* tgt, const void* src_xy,
                             const void* tgt_xy, const void* rows, const void* lse, void* grad_src, void* grad_tgt,
                             std::int64_t batch, std::int64_t n, std::int64_t m, std::int64_t channels, double pow,
                             double scale, int threads);
  // float32 FLOP/s of one thread running independent vector FMA chains for `iterations` rounds (csrc/peak.h)
  double (*fma_flops_per_second)(long iterations);
};

// Defined in isa_generic.cpp / isa_avx2.cpp / isa_avx512.cpp. The AVX tables are null where the
// compiler cannot target them (not x86-64, or not GCC/Clang).
const KernelTable* kernels_generic();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

}  // namespace dve_bind
