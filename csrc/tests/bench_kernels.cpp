// Single-thread timing of the csrc kernels (process CPU time, best of 3), for tuning tile sizes and
// checking the effect of compiler flags without rebuilding the Python extension:
//   ./build/cmake/bench_kernels_avx2 [N=M rows, default 1225 (35x35)]     (B = 8, C = 64, float)
// GFLOP/s counts 2 * C flops per (u, v) pair and per N x M x C product the kernel performs.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <vector>

#include "exchange.h"
#include "warp_loss.h"

namespace {
double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}
template <class F>
double best_of_three(F f) {
  f();  // warm-up
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    const double t0 = cpu_seconds();
    f();
    best = std::min(best, cpu_seconds() - t0);
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  const std::int64_t B = 8, N = argc > 1 ? std::atoll(argv[1]) : 1225, M = N, C = 64;
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<float> q(B * N * C), a(B * M * C), out(B * N * C), gq(B * N * C), ga(B * M * C);
  std::vector<float> xy(B * N * 2), txy(B * M * 2), rows(B * N), grad_rows(B * N, 1.0f);
  std::vector<double> lse(B * N), lse_rows(B * N);
  for (auto& x : q) x = normal(rng) * 2.5f;  // |x| ~ 20, like normalised x20 embeddings
  for (auto& x : a) x = normal(rng) * 2.5f;
  for (auto& x : xy) x = std::abs(normal(rng)) * 30;
  for (auto& x : txy) x = std::abs(normal(rng)) * 30;
  const double pairs = static_cast<double>(B) * N * M;
  auto report = [&](const char* name, double seconds, int products) {
    std::printf("%-14s %8.1f ms %6.1f GFLOP/s %6.2f ns/pair\n", name, seconds * 1e3,
                products * pairs * C * 2 / seconds / 1e9, seconds / pairs * 1e9);
  };
  std::printf("B=%lld N=M=%lld C=%lld float, 1 thread, %s\n", static_cast<long long>(B), static_cast<long long>(N),
              static_cast<long long>(C), DVE_VECTOR_BYTES == 64 ? "512-bit" : DVE_VECTOR_BYTES == 32 ? "256-bit" : "128-bit");
  report("exchange_fwd", best_of_three([&] {
           dve::exchange_forward(q.data(), a.data(), out.data(), lse.data(), B, N, M, C, 1.0, 1);
         }), 2);
  report("exchange_bwd", best_of_three([&] {
           dve::exchange_backward(out.data(), q.data(), a.data(), out.data(), lse.data(), gq.data(), ga.data(), B, N,
                                  M, C, 1.0, 1);
         }), 5);
  report("warp_loss_fwd", best_of_three([&] {
           dve::warp_loss_forward(q.data(), a.data(), xy.data(), txy.data(), rows.data(), lse_rows.data(), B, N, M, C,
                                  0.5, 1.0, 1);
         }), 1);
  report("warp_loss_bwd", best_of_three([&] {
           dve::warp_loss_backward(grad_rows.data(), q.data(), a.data(), xy.data(), txy.data(), rows.data(),
                                   lse_rows.data(), gq.data(), ga.data(), B, N, M, C, 0.5, 1.0, 1);
         }), 3);
  return 0;
}
