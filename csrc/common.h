// dve_kernels CPU backend: shared building blocks of the fused kernels (torch-free C++17).
//
// Every op streams over tiles of kTileRows source rows x kTileCols target rows, the same
// online-softmax scheme as flash attention: no N x M buffer is ever allocated, only per-task
// scratch of tile size and O(B * (N + M) * C) workspaces.
//
// The hot loops are two micro-kernels written with GCC/Clang vector extensions, so that the
// compiler emits full-width FMAs for whatever instruction set the translation unit targets
// (python/isa_*.cpp compile this header once per ISA, inside `#pragma GCC target`, in a
// namespace of their own, and the binding picks one at run time):
//   tile_logits      S[r][k] = sum_c X[r][c] * KT[c][k]          (rows x 64, C runtime)
//   accumulate_rows  Out[i][:] += sum_j coef(i, j) * Y[j][:]      (vectorised over channels)
// The element-wise softmax work is plain loops over fixed-size rows that the vectoriser turns
// into SIMD code (softmax_exp is branch-free for that reason).
//
// Determinism: every sum has a fixed order that depends only on the shapes (never on the
// number of threads or on timing), so outputs and gradients are bitwise reproducible on a
// given machine and instruction set.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// The namespace that keeps the per-ISA copies of these templates apart (see python/isa_*.cpp).
#ifndef DVE_ISA_NS
#define DVE_ISA_NS portable
#endif

// Width in bytes of the vector type used by the micro-kernels: 16 (SSE2 / NEON), 32 (AVX2) or
// 64 (AVX-512). Wider than the hardware still works (the compiler splits it), only slower.
#ifndef DVE_VECTOR_BYTES
#if defined(__AVX512F__)
#define DVE_VECTOR_BYTES 64
#elif defined(__AVX__)
#define DVE_VECTOR_BYTES 32
#else
#define DVE_VECTOR_BYTES 16
#endif
#endif

// Rows of the register block of the micro-kernels: AVX-512 has 32 vector registers, the others 16.
#ifndef DVE_MICRO_ROWS
#if DVE_VECTOR_BYTES >= 64
#define DVE_MICRO_ROWS 4
#else
#define DVE_MICRO_ROWS 2
#endif
#endif

namespace dve {
// Everything lives in a per-ISA inline namespace: a translation unit compiled for AVX2 must not
// hand the linker an AVX2 copy of an inline function that a generic translation unit also uses.
inline namespace DVE_ISA_NS {

// ---------------------------------------------------------------------------------------------
// Storage types. bf16/fp16 tensors are stored 16-bit and computed in float; float and double are
// computed in themselves. The two 16-bit structs have the bit layout of c10::BFloat16 / c10::Half,
// so the binding passes torch's buffers straight through.
struct bfloat16_t {
  std::uint16_t bits;
};
struct float16_t {
  std::uint16_t bits;
};

inline float bits_to_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
inline std::uint32_t float_to_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// Round to nearest even (what torch does); NaN stays a quiet NaN.
inline bfloat16_t float_to_bfloat16(float value) {
  const std::uint32_t bits = float_to_bits(value);
  if (value != value) return bfloat16_t{static_cast<std::uint16_t>((bits >> 16) | 0x0040u)};
  const std::uint32_t rounding = 0x7FFFu + ((bits >> 16) & 1u);
  return bfloat16_t{static_cast<std::uint16_t>((bits + rounding) >> 16)};
}
inline float bfloat16_to_float(bfloat16_t value) {
  return bits_to_float(static_cast<std::uint32_t>(value.bits) << 16);
}

// IEEE binary16 <-> binary32, round to nearest even, subnormals, infinities and NaN included.
inline float float16_to_float(float16_t value) {
  const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
  const std::uint32_t exponent = (value.bits >> 10) & 0x1Fu;
  const std::uint32_t mantissa = value.bits & 0x3FFu;
  if (exponent == 0x1Fu) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  // zero or subnormal: mantissa * 2^-24, exact in float
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
  return sign ? -magnitude : magnitude;
}
inline float16_t float_to_float16(float value) {
  const std::uint32_t bits = float_to_bits(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((bits >> 16) & 0x8000u);
  const std::uint32_t abs_bits = bits & 0x7FFFFFFFu;
  if (abs_bits >= 0x7F800000u) {  // inf or NaN
    const std::uint16_t payload = abs_bits > 0x7F800000u ? 0x0200u : 0u;
    return float16_t{static_cast<std::uint16_t>(sign | 0x7C00u | payload)};
  }
  if (abs_bits >= 0x477FF000u) return float16_t{static_cast<std::uint16_t>(sign | 0x7C00u)};  // rounds to inf
  if (abs_bits < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // value / 2^-24, rounded to nearest even by the float addition of 0.5-ulp magic.
    const float scaled = bits_to_float(abs_bits) * 16777216.0f;  // exact (power of two)
    const float rounded = (scaled + 8388608.0f) - 8388608.0f;    // nearest even integer
    return float16_t{static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(rounded))};
  }
  // normal: rebias exponent, round mantissa from 23 to 10 bits (nearest even)
  const std::uint32_t rounding = 0xFFFu + ((abs_bits >> 13) & 1u);
  const std::uint32_t half_bits = ((abs_bits + rounding) >> 13) - (112u << 10);
  return float16_t{static_cast<std::uint16_t>(sign | half_bits)};
}

template <class Storage>
struct storage_traits;
template <>
struct storage_traits<float> {
  using compute = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <>
struct storage_traits<double> {
  using compute = double;
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
template <>
struct storage_traits<bfloat16_t> {
  using compute = float;
  static float load(bfloat16_t v) { return bfloat16_to_float(v); }
  static bfloat16_t store(float v) { return float_to_bfloat16(v); }
};
template <>
struct storage_traits<float16_t> {
  using compute = float;
  static float load(float16_t v) { return float16_to_float(v); }
  static float16_t store(float v) { return float_to_float16(v); }
};

// The accumulation type for a storage type: float, or double for double.
template <class Storage>
using compute_t = typename storage_traits<Storage>::compute;

// ---------------------------------------------------------------------------------------------
// Tiling constants.
#ifndef DVE_TILE_ROWS
#define DVE_TILE_ROWS 128
#endif
#ifndef DVE_TILE_COLS
#define DVE_TILE_COLS 64
#endif
constexpr int kTileRows = DVE_TILE_ROWS;  // source rows (u) per task tile
constexpr int kTileCols = DVE_TILE_COLS;  // target rows (v / w) per inner tile; S tiles are kTileRows x kTileCols
constexpr int kLanes = 16;      // independent partial sums per row reduction (vectorisable, fixed order)
constexpr int kMicroRows = DVE_MICRO_ROWS;  // rows per micro-kernel register block
#ifndef DVE_MICRO_VECTORS
#define DVE_MICRO_VECTORS 4
#endif
constexpr int kMicroVectors = DVE_MICRO_VECTORS;  // vectors per row of a register block
static_assert(kTileRows % 4 == 0 && kTileCols % kLanes == 0, "tile sizes must fit the micro-kernels");

template <class A>
struct simd {
  static constexpr int width = DVE_VECTOR_BYTES / static_cast<int>(sizeof(A));
  // Unaligned, may-alias vector view of A[width]; the scratch buffers are plain std::vector.
  typedef A vec __attribute__((vector_size(DVE_VECTOR_BYTES), aligned(sizeof(A)), may_alias));
  static vec load(const A* p) { return *reinterpret_cast<const vec*>(p); }
  static void store(A* p, vec v) { *reinterpret_cast<vec*>(p) = v; }
  static vec broadcast(A x) { return x - vec{}; }  // x - 0 == x exactly; folds to a broadcast
};

// Channels padded to a whole number of vectors, so the channel loops have no tail.
template <class A>
inline std::int64_t padded_channels(std::int64_t channels) {
  const std::int64_t w = simd<A>::width;
  return (channels + w - 1) / w * w;
}
inline int round_up(int value, int multiple) { return (value + multiple - 1) / multiple * multiple; }
inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// exp for the softmax: branch-free so that row loops vectorise. float: Cephes-style range
// reduction + degree-6 polynomial (about 1 ulp); exp(x) for x < -87.3 is flushed to 0 (it is
// below FLT_MIN there), -inf gives exactly 0, NaN gives NaN. double: the same scheme with a
// two-part ln 2 and a degree-13 Taylor polynomial on |r| <= ln2/2 (truncation below 1e-17, about
// 1 ulp in all), flushed to 0 below -708.3 (DBL_MIN) and inf above 709 (the softmax only ever
// takes exp of logit - max <= 0); std::exp would be a scalar call that keeps the row loops from
// vectorising.
// float: exp of a softmax argument (logit - max, or (logit - hi) - lo: at most a rounding above 0; valid up to
// 88.3; -inf and NaN pass through as 0 and NaN): Cephes-style range reduction and polynomial (about 1 ulp), 2^n
// straight from the bits of the rounding sum t = x log2(e) + 1.5 * 2^23, whose low bits hold n, and no overflow
// branch (a third fewer instructions than with one): it is the softmax's whole element-wise cost besides the dots.
inline float softmax_exp(float x) {
  constexpr float lo = -87.3365f;
  const float xc = x >= lo ? x : lo;  // also maps NaN to lo; the NaN is restored at the end
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;  // x log2(e), rounded to an integer
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float poly = p * (r * r) + r + 1.0f;
  const float two_n = bits_to_float((float_to_bits(t) + 127u) << 23);  // the low 9 bits of t's bits: n + 127
  const float result = x < lo ? 0.0f : poly * two_n;
  return x != x ? x : result;
}
inline double fast_exp(double x) {
  constexpr double lo = -708.3;
  constexpr double hi = 709.0;
  constexpr double magic = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer in the low bits
  double xc = x >= lo ? x : lo;  // also maps NaN to lo; the NaN is restored at the end
  xc = xc <= hi ? xc : hi;
  const double t = xc * 1.4426950408889634 + magic;
  const double n = t - magic;
  const double r = (xc - n * 0.693147180369123816490) - n * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  const double poly = p * (r * r) + r + 1.0;
  // the bits of t are those of magic plus n: adding the bias and shifting the sum by 52 leaves 2^n's bits
  std::uint64_t bits;
  std::memcpy(&bits, &t, sizeof(bits));
  bits = (bits + 1023u) << 52;
  double two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  double result = poly * two_n;
  result = x < lo ? 0.0 : result;
  result = x > hi ? std::numeric_limits<double>::infinity() : result;
  return x != x ? x : result;
}
inline double softmax_exp(double x) { return fast_exp(x); }  // after fast_exp(double): no float overload

// lse = max + log(sum) is saved in double for every storage type. With logits of ~400 (normalised
// x20 embeddings) one float ulp of lse is 3e-5, and the backward's exp(logit - lse) would inherit it
// as a relative error of every probability of the row (a uniform per-row factor, which ties like C = 1
// make twice the dense float32 error). The backward splits it into hi + lo in the compute type and
// evaluates (logit - hi) - lo: logit - hi is exact where the probability matters.
inline double log_sum_exp(double running_max, double running_sum) { return running_max + std::log(running_sum); }

template <class A>
struct split_lse {
  A hi, lo;
  explicit split_lse(double lse) : hi(static_cast<A>(lse)), lo(static_cast<A>(lse - static_cast<double>(hi))) {}
};

// ---------------------------------------------------------------------------------------------
// Distances ||a - b||^pow from squared distances, with the common exponents special-cased.
enum class PowMode { quarter_root, root, square, general };  // pow 0.5, 1, 2, other

inline PowMode pow_mode(double pow) {
  if (pow == 0.5) return PowMode::quarter_root;
  if (pow == 1.0) return PowMode::root;
  if (pow == 2.0) return PowMode::square;
  return PowMode::general;
}

template <PowMode mode, class A>
inline A distance_pow(A squared, A half_pow) {
  if constexpr (mode == PowMode::quarter_root) {
    return std::sqrt(std::sqrt(squared));
  } else if constexpr (mode == PowMode::root) {
    return std::sqrt(squared);
  } else if constexpr (mode == PowMode::square) {
    (void)half_pow;
    return squared;
  } else {
    return std::pow(squared, half_pow);  // ||d||^pow = (||d||^2)^(pow/2)
  }
}

// ---------------------------------------------------------------------------------------------
// Tile loading: convert a block of rows of a (rows x C) storage array to the compute type,
// multiplied by `multiplier`, into scratch with zero padding.

// dst: kTile x padded_channels rows; rows >= count and channels >= C are zero.
template <class S, class A = compute_t<S>>
inline void load_rows(A* dst, int tile, const S* src, int count, std::int64_t channels,
                      std::int64_t padded, A multiplier) {
  for (int r = 0; r < tile; ++r) {
    A* out = dst + r * padded;
    if (r < count) {
      const S* in = src + r * channels;
      for (std::int64_t c = 0; c < channels; ++c) out[c] = storage_traits<S>::load(in[c]) * multiplier;
      for (std::int64_t c = channels; c < padded; ++c) out[c] = A(0);
    } else {
      for (std::int64_t c = 0; c < padded; ++c) out[c] = A(0);
    }
  }
}

// dst: channels x kTileCols (transposed); columns >= count are zero.
template <class S, class A = compute_t<S>>
inline void load_transposed(A* dst, const S* src, int count, std::int64_t channels, A multiplier) {
  for (std::int64_t c = 0; c < channels; ++c) {
    A* out = dst + c * kTileCols;
    for (int k = count; k < kTileCols; ++k) out[k] = A(0);
  }
  for (int k = 0; k < count; ++k) {
    const S* in = src + k * channels;
    for (std::int64_t c = 0; c < channels; ++c) dst[c * kTileCols + k] = storage_traits<S>::load(in[c]) * multiplier;
  }
}

// The target side of an op (keys / values), converted to the compute type once per call and laid out per tile
// of kTileCols rows: transposed (C x kTileCols, for the logits) and, when asked, row-major with padded channels
// (for P @ Y). Packing once instead of once per (source tile, target tile) removes a scalar copy of the tile
// from the hot loop; the memory is O(B * M * C), as the op's inputs.
template <class A>
struct PackedTiles {
  std::int64_t tiles, channels, padded;
  std::vector<A> rows, transposed;

  template <class S>
  PackedTiles(const S* data, std::int64_t batch, std::int64_t count, std::int64_t channels_, bool with_rows,
              int threads)
      : tiles(ceil_div(count, kTileCols)), channels(channels_), padded(padded_channels<A>(channels_)),
        rows(with_rows ? static_cast<std::size_t>(batch * tiles * kTileCols * padded) : 0),
        transposed(static_cast<std::size_t>(batch * tiles * channels * kTileCols)) {
    const std::int64_t total = batch * tiles;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (std::int64_t index = 0; index < total; ++index) {
      const std::int64_t b = index / tiles, v0 = (index % tiles) * kTileCols;
      const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, count - v0));
      const S* from = data + (b * count + v0) * channels;
      load_transposed(transposed.data() + index * channels * kTileCols, from, nv, channels, A(1));
      if (with_rows) load_rows(rows.data() + index * kTileCols * padded, kTileCols, from, nv, channels, padded, A(1));
    }
  }
  const A* rows_of(std::int64_t b, std::int64_t v0) const {
    return rows.data() + (b * tiles + v0 / kTileCols) * kTileCols * padded;
  }
  const A* transposed_of(std::int64_t b, std::int64_t v0) const {
    return transposed.data() + (b * tiles + v0 / kTileCols) * channels * kTileCols;
  }
};

// ---------------------------------------------------------------------------------------------
// Micro-kernel 1: S[r][k] = sum_{c < C} X[r][c] * KT[c][k] for r < rows (a multiple of
// kMicroRows) and all kTileCols columns. X has row stride ldx; KT is C x kTileCols; S has row
// stride kTileCols. Each (r, k) sums its channels in blocks of kChannelBlock (in increasing order,
// one FMA per step, each block from zero, blocks added in order): blocked summation keeps the float
// rounding of a C = 256 dot product at ~(32 + C/32) ulps instead of ~C, below dense sgemm's. The
// same inputs give the same logits in forward and backward.
constexpr std::int64_t kChannelBlock = 32;

template <class A>
inline void tile_logits(const A* X, std::int64_t ldx, const A* KT, std::int64_t channels, int rows, A* S) {
  using V = simd<A>;
  using vec = typename V::vec;
  constexpr int W = V::width;
  constexpr int block_cols = W * kMicroVectors;
  static_assert(kTileCols % block_cols == 0, "kTileCols must be a multiple of the register block");
  for (int r0 = 0; r0 < rows; r0 += kMicroRows) {
    for (int k0 = 0; k0 < kTileCols; k0 += block_cols) {
      for (std::int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
        const std::int64_t c1 = std::min(channels, c0 + kChannelBlock);
        vec acc[kMicroRows][kMicroVectors];
        for (int i = 0; i < kMicroRows; ++i)
          for (int j = 0; j < kMicroVectors; ++j) acc[i][j] = vec{};
        const A* kt = KT + c0 * kTileCols + k0;
        for (std::int64_t c = c0; c < c1; ++c, kt += kTileCols) {
          vec b[kMicroVectors];
          for (int j = 0; j < kMicroVectors; ++j) b[j] = V::load(kt + j * W);
          for (int i = 0; i < kMicroRows; ++i) {
            const vec a = V::broadcast(X[(r0 + i) * ldx + c]);
            for (int j = 0; j < kMicroVectors; ++j) acc[i][j] += a * b[j];
          }
        }
        for (int i = 0; i < kMicroRows; ++i)
          for (int j = 0; j < kMicroVectors; ++j) {
            A* s = S + (r0 + i) * kTileCols + k0 + j * W;
            V::store(s, c0 == 0 ? acc[i][j] : V::load(s) + acc[i][j]);
          }
      }
    }
  }
}

// Micro-kernel 2: Out[i][:] += sum_{j < count} coef[i * coef_row + j * coef_col] * Y[j][:]
// for i < rows (a multiple of kMicroRows), vectorised over the padded channels. Out and Y have
// row stride `padded`. Called with (coef_row, coef_col) = (kTileCols, 1) for P @ Y and with
// (1, kTileCols) for P^T @ Y. Each output element sums over j in increasing order.
template <class A, int NV>
inline void accumulate_block(A* Out, const A* coef, int coef_row, int coef_col, const A* Y, int count,
                             std::int64_t padded, int r0, std::int64_t c0) {
  using V = simd<A>;
  using vec = typename V::vec;
  constexpr int W = V::width;
  vec acc[kMicroRows][NV];
  for (int i = 0; i < kMicroRows; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V::load(Out + (r0 + i) * padded + c0 + v * W);
  for (int j = 0; j < count; ++j) {
    vec y[NV];
    for (int v = 0; v < NV; ++v) y[v] = V::load(Y + j * padded + c0 + v * W);
    for (int i = 0; i < kMicroRows; ++i) {
      const vec a = V::broadcast(coef[(r0 + i) * coef_row + j * coef_col]);
      for (int v = 0; v < NV; ++v) acc[i][v] += a * y[v];
    }
  }
  for (int i = 0; i < kMicroRows; ++i)
    for (int v = 0; v < NV; ++v) V::store(Out + (r0 + i) * padded + c0 + v * W, acc[i][v]);
}

template <class A>
inline void accumulate_rows(A* Out, const A* coef, int coef_row, int coef_col, int rows, const A* Y, int count,
                            std::int64_t padded) {
  constexpr int W = simd<A>::width;
  constexpr std::int64_t chunk = W * kMicroVectors;
  for (int r0 = 0; r0 < rows; r0 += kMicroRows) {
    std::int64_t c0 = 0;
    for (; c0 + chunk <= padded; c0 += chunk)
      accumulate_block<A, kMicroVectors>(Out, coef, coef_row, coef_col, Y, count, padded, r0, c0);
    switch ((padded - c0) / W) {  // 0..kMicroVectors-1 vectors left
      case 3: accumulate_block<A, 3>(Out, coef, coef_row, coef_col, Y, count, padded, r0, c0); break;
      case 2: accumulate_block<A, 2>(Out, coef, coef_row, coef_col, Y, count, padded, r0, c0); break;
      case 1: accumulate_block<A, 1>(Out, coef, coef_row, coef_col, Y, count, padded, r0, c0); break;
      default: break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Row reductions. A row of a tile is reduced into kLanes independent partial results (lane l takes the
// columns k = l mod kLanes), which stay lanes across the tiles of a row and are combined once, at the row's
// end, by a fixed pairwise tree: vectorisable without -ffast-math, identical on every run, and no
// horizontal reduction inside the hot loop.
template <class A>
inline void lane_max(const A* row, A* lanes) {
  for (int l = 0; l < kLanes; ++l) lanes[l] = row[l];
  for (int k0 = kLanes; k0 < kTileCols; k0 += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = row[k0 + l] > lanes[l] ? row[k0 + l] : lanes[l];
}

template <class A>
inline A tree_max(A* lanes) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) lanes[l] = lanes[l + width] > lanes[l] ? lanes[l + width] : lanes[l];
  return lanes[0];
}

template <class A>
inline A row_max(const A* row) {
  A lanes[kLanes];
  lane_max(row, lanes);
  return tree_max(lanes);
}

// The sum of kLanes partial sums, by the fixed pairwise tree (the lanes are not changed).
template <class A>
inline A lane_total(const A* lanes) {
  A work[kLanes];
  for (int l = 0; l < kLanes; ++l) work[l] = lanes[l];
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) work[l] += work[l + width];
  return work[0];
}

// The backward's statistics pre-pass over one tile row (both ops): sum_lanes += p_k and
// excess_lanes += p_k (value(k) - centre), lane by lane, with p_k = exp((logit_k - hi) - lo) for the k < nv
// columns of the tile (hi + lo: the forward's lse, split), 0 past them. value(k) is the row's own quantity (the
// warp loss's distance, the exchange's <dO, aux> logit). The caller totals the lanes after the row's last tile.
// kKeep: the row's logits are replaced by p_k, for the second pass (see backward.h).
template <bool kKeep, class A, class Value>
inline void add_mass_and_excess(A* row, A hi, A lo, int nv, A centre, Value value, A* sum_lanes, A* excess_lanes) {
  for (int k0 = 0; k0 < kTileCols; k0 += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const int k = k0 + l;
      const A p = k < nv ? softmax_exp(static_cast<A>((row[k] - hi) - lo)) : A(0);
      if constexpr (kKeep) row[k] = p;
      sum_lanes[l] += p;
      excess_lanes[l] += p * static_cast<A>(value(k) - centre);
    }
}

// The probability of column k < nv of a tile row in the backward's second pass: kept by the first pass
// (add_mass_and_excess<true>), or computed again from the logits, to the same bits.
template <class A>
inline A backward_probability(const A* row, int k, A hi, A lo, bool kept) {
  return kept ? row[k] : softmax_exp(static_cast<A>((row[k] - hi) - lo));
}

// Threads for a parallel region: the caller's request, or OpenMP's default.
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

// Number of fixed source chunks of the backward passes (each chunk owns a private copy of the
// target-side gradient, summed in chunk order at the end). It depends only on the shapes, never on
// the thread count, so gradients are bitwise identical for any number of threads; the bound keeps
// the workspace at O((B + 8) * M * C).
inline std::int64_t backward_chunks(std::int64_t batch, std::int64_t source_tiles) {
  const std::int64_t wanted = ceil_div(8, batch);
  return std::max<std::int64_t>(1, std::min(wanted, source_tiles));
}

// The backward's target-side gradient: out[b, v, :] = the sum over chunks, in chunk order, of the private partial
// sums partial[(chunk * batch + b) * rows_padded + v][:padded] (see backward_chunks). Deterministic: the order
// depends only on the shapes.
template <class S, class A>
void sum_chunk_partials(const std::vector<A>& partial, std::int64_t chunks, std::int64_t batch, std::int64_t rows,
                        std::int64_t rows_padded, std::int64_t channels, std::int64_t padded, S* out, int threads) {
  const std::int64_t total_rows = batch * rows;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t index = 0; index < total_rows; ++index) {
    const std::int64_t b = index / rows;
    const std::int64_t v = index % rows;
    S* dst = out + index * channels;
    for (std::int64_t c = 0; c < channels; ++c) {
      A total = partial[(b * rows_padded + v) * padded + c];
      for (std::int64_t chunk = 1; chunk < chunks; ++chunk)
        total += partial[((chunk * batch + b) * rows_padded + v) * padded + c];
      dst[c] = storage_traits<S>::store(total);
    }
  }
}

}  // namespace DVE_ISA_NS
}  // namespace dve
