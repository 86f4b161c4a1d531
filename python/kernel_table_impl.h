// Body of python/isa_<name>.cpp: instantiates the csrc kernels for the instruction set that the
// including file selected (DVE_ISA_NS, DVE_VECTOR_BYTES, `#pragma GCC target`) and returns them as
// a KernelTable. Include once per translation unit, after the target pragma.
#include <type_traits>

#include "exchange.h"
#include "kernel_table.h"
#include "peak.h"
#include "warp_loss.h"

namespace dve_bind {
namespace DVE_ISA_NS {
namespace {

template <class S>
using A = dve::compute_t<S>;

// Calls `body` with a null pointer of the storage type, for the static type only.
template <class Body>
void with_storage(Storage storage, Body&& body) {
  switch (storage) {
    case Storage::f32: return body(static_cast<float*>(nullptr));
    case Storage::f64: return body(static_cast<double*>(nullptr));
    case Storage::bf16: return body(static_cast<dve::bfloat16_t*>(nullptr));
    case Storage::f16: return body(static_cast<dve::float16_t*>(nullptr));
  }
}

void exchange_forward(Storage storage, const void* query, const void* aux, void* out, void* lse, std::int64_t batch,
                      std::int64_t n, std::int64_t m, std::int64_t channels, double scale, int threads) {
  with_storage(storage, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dve::exchange_forward<S>(static_cast<const S*>(query), static_cast<const S*>(aux), static_cast<S*>(out),
                             static_cast<double*>(lse), batch, n, m, channels, scale, threads);
  });
}

void exchange_backward(Storage storage, const void* grad_out, const void* query, const void* aux, const void* out,
                       const void* lse, void* grad_query, void* grad_aux, std::int64_t batch, std::int64_t n,
                       std::int64_t m, std::int64_t channels, double scale, int threads) {
  with_storage(storage, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dve::exchange_backward<S>(static_cast<const S*>(grad_out), static_cast<const S*>(query),
                              static_cast<const S*>(aux), static_cast<const S*>(out), static_cast<const double*>(lse),
                              static_cast<S*>(grad_query), static_cast<S*>(grad_aux), batch, n, m, channels, scale,
                              threads);
  });
}

void warp_loss_forward(Storage storage, const void* src, const void* tgt, const void* src_xy, const void* tgt_xy,
                       void* rows, void* lse, std::int64_t batch, std::int64_t n, std::int64_t m,
                       std::int64_t channels, double pow, double scale, int threads) {
  with_storage(storage, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dve::warp_loss_forward<S>(static_cast<const S*>(src), static_cast<const S*>(tgt),
                              static_cast<const A<S>*>(src_xy), static_cast<const A<S>*>(tgt_xy),
                              static_cast<A<S>*>(rows), static_cast<double*>(lse), batch, n, m, channels, pow, scale,
                              threads);
  });
}

void warp_loss_backward(Storage storage, const void* grad_rows, const void* src, const void* tgt, const void* src_xy,
                        const void* tgt_xy, const void* rows, const void* lse, void* grad_src, void* grad_tgt,
                        std::int64_t batch, std::int64_t n, std::int64_t m, std::int64_t channels, double pow,
                        double scale, int threads) {
  with_storage(storage, [&](auto* tag) {
    using S = std::remove_pointer_t<decltype(tag)>;
    dve::warp_loss_backward<S>(static_cast<const A<S>*>(grad_rows), static_cast<const S*>(src),
                               static_cast<const S*>(tgt), static_cast<const A<S>*>(src_xy),
                               static_cast<const A<S>*>(tgt_xy), static_cast<const A<S>*>(rows),
                               static_cast<const double*>(lse), static_cast<S*>(grad_src), static_cast<S*>(grad_tgt),
                               batch, n, m, channels, pow, scale, threads);
  });
}

}  // namespace

const KernelTable* table(const char* isa) {
  static const KernelTable kernels{isa, &exchange_forward, &exchange_backward, &warp_loss_forward,
                                   &warp_loss_backward, &dve::fma_flops_per_second};
  return &kernels;
}

}  // namespace DVE_ISA_NS
}  // namespace dve_bind
