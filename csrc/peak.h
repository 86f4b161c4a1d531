// The machine's own FMA peak, for the roofline of the kernels (bench/roofline.py): one thread runs
// kChains independent chains of vector FMAs, enough to cover the FMA latency on every x86-64 core
// (4 cycles x 2 pipes), and returns float32 FLOP/s (2 per lane per FMA). Compiled per instruction set
// like the kernels (python/isa_*.cpp), so the peak is the one of the vector width the kernels use.
#pragma once

#include <chrono>

#include "common.h"

namespace dve {
inline namespace DVE_ISA_NS {

inline double fma_flops_per_second(long iterations) {
  using V = simd<float>;
  using vec = typename V::vec;
  constexpr int kChains = 12;  // named variables, not an array: they must all live in registers
  vec c0 = V::broadcast(0.0f), c1 = V::broadcast(1e-3f), c2 = V::broadcast(2e-3f), c3 = V::broadcast(3e-3f);
  vec c4 = V::broadcast(4e-3f), c5 = V::broadcast(5e-3f), c6 = V::broadcast(6e-3f), c7 = V::broadcast(7e-3f);
  vec c8 = V::broadcast(8e-3f), c9 = V::broadcast(9e-3f), c10 = V::broadcast(1e-2f), c11 = V::broadcast(1.1e-2f);
  const vec a = V::broadcast(0.999999f), b = V::broadcast(1e-7f);
  const auto start = std::chrono::steady_clock::now();
  for (long it = 0; it < iterations; ++it) {  // one FMA per chain per round (-ffp-contract=fast)
    c0 = c0 * a + b; c1 = c1 * a + b; c2 = c2 * a + b; c3 = c3 * a + b; c4 = c4 * a + b; c5 = c5 * a + b;
    c6 = c6 * a + b; c7 = c7 * a + b; c8 = c8 * a + b; c9 = c9 * a + b; c10 = c10 * a + b; c11 = c11 * a + b;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const vec sum = ((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)) + ((c8 + c9) + (c10 + c11));
  volatile float sink = sum[0];  // the chains are used: the compiler cannot drop them
  (void)sink;
  return 2.0 * V::width * kChains * static_cast<double>(iterations) / seconds;
}

}  // namespace DVE_ISA_NS
}  // namespace dve
