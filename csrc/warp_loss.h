// Warp loss rows (paper eq. 3), fused forward and backward.
//
//   rows_u = sum_v p(v|u) * ||src_xy_u - tgt_xy_v||^pow,   p(v|u) = softmax_v(scale * <src_u, tgt_v>)
//
// Shapes: src (B, N, C), tgt (B, M, C), src_xy (B, N, 2), tgt_xy (B, M, 2) in pixels (compute type,
// no gradient), rows (B, N) in the compute type and lse (B, N) in double (see common.h). Distances are computed from the
// coordinates in registers, never stored.
//
// Backward, with g_u = grad_rows_u and d_uv the distance term:
//   dlogit_uv = p_uv (d_uv - L_u) g_u,  L_u = sum_v p_uv d_uv
//   grad_src_u = scale * sum_v dlogit_uv tgt_v,   grad_tgt_v = scale * sum_u dlogit_uv src_u
// computed by two_pass_backward (backward.h) with WarpLossRows below: p = P / S_u are this backward's own
// normalised probabilities and L_u = L~_u + sum_v P_uv (d_uv - L~_u) / S_u (L~_u: the forward's rows).
#pragma once

#include "backward.h"

namespace dve {
inline namespace DVE_ISA_NS {

namespace detail {

// The distance term of one source point (sx, sy) to target point k of a tile. It is computed where it is used,
// inside the softmax loops, so that its square roots (a unit of their own) overlap with exp's FMAs.
template <PowMode mode, class A>
inline A distance_to(A sx, A sy, const A* tx, const A* ty, int k, A half_pow) {
  const A dx = sx - tx[k];
  const A dy = sy - ty[k];
  return distance_pow<mode>(dx * dx + dy * dy, half_pow);
}

// Target coordinates of a tile, split into x and y arrays (padding: copies of the last point, so
// the padded distances stay finite; their probabilities are exactly 0).
template <class A>
inline void load_coordinates(const A* xy, int count, A* tx, A* ty) {
  for (int k = 0; k < kTileCols; ++k) {
    const int from = k < count ? k : count - 1;
    tx[k] = xy[2 * from];
    ty[k] = xy[2 * from + 1];
  }
}

template <PowMode mode, class S>
void warp_loss_forward_impl(const S* src, const S* tgt, const compute_t<S>* src_xy, const compute_t<S>* tgt_xy,
                            compute_t<S>* rows_out, double* lse, std::int64_t batch, std::int64_t n_src,
                            std::int64_t n_tgt, std::int64_t channels, double pow, double scale, int num_threads) {
  using A = compute_t<S>;
  const std::int64_t padded = padded_channels<A>(channels);
  const std::int64_t src_tiles = ceil_div(n_src, kTileRows);
  const std::int64_t tasks = batch * src_tiles;
  const A scale_a = static_cast<A>(scale);
  const A half_pow = static_cast<A>(pow / 2);
  const int threads = resolve_threads(num_threads);
  const PackedTiles<A> packed(tgt, batch, n_tgt, channels, false, threads);

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t task = 0; task < tasks; ++task) {
    const std::int64_t b = task / src_tiles;
    const std::int64_t u0 = (task % src_tiles) * kTileRows;
    const int nu = static_cast<int>(std::min<std::int64_t>(kTileRows, n_src - u0));
    const int rows = round_up(nu, kMicroRows);
    const std::int64_t row0 = b * n_src + u0;
    const A* tgt_xy_b = tgt_xy + b * n_tgt * 2;

    std::vector<A> src_tile(kTileRows * padded);
    std::vector<A> logits(kTileRows * kTileCols);
    // Online softmax lane by lane (lane l: the columns k = l mod kLanes), each lane with its own running max:
    // nothing is reduced across lanes until the row's end (see row reductions, common.h).
    A max_lanes[kTileRows][kLanes], sum_lanes[kTileRows][kLanes], dist_lanes[kTileRows][kLanes];
    A tx[kTileCols], ty[kTileCols];
    for (int r = 0; r < kTileRows; ++r)
      for (int l = 0; l < kLanes; ++l) {
        max_lanes[r][l] = -std::numeric_limits<A>::infinity();
        sum_lanes[r][l] = dist_lanes[r][l] = A(0);
      }
    load_rows(src_tile.data(), kTileRows, src + row0 * channels, nu, channels, padded, scale_a);

    for (std::int64_t v0 = 0; v0 < n_tgt; v0 += kTileCols) {
      const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_tgt - v0));
      load_coordinates(tgt_xy_b + 2 * v0, nv, tx, ty);
      tile_logits(src_tile.data(), padded, packed.transposed_of(b, v0), channels, rows, logits.data());

      for (int r = 0; r < nu; ++r) {
        A* row = logits.data() + r * kTileCols;
        for (int k = nv; k < kTileCols; ++k) row[k] = -std::numeric_limits<A>::infinity();
        const A sx = src_xy[2 * (row0 + r)], sy = src_xy[2 * (row0 + r) + 1];
        A new_max[kLanes], shift[kLanes];
        lane_max(row, new_max);
        A* m = max_lanes[r];
        A* sums = sum_lanes[r];
        A* dists = dist_lanes[r];
        for (int l = 0; l < kLanes; ++l) {
          new_max[l] = new_max[l] > m[l] ? new_max[l] : m[l];
          shift[l] = new_max[l] == -std::numeric_limits<A>::infinity() ? A(0) : new_max[l];  // a lane of padding only
          const A rescale = softmax_exp(static_cast<A>(m[l] - shift[l]));
          sums[l] *= rescale;
          dists[l] *= rescale;
          m[l] = new_max[l];
        }
        for (int k0 = 0; k0 < kTileCols; k0 += kLanes)
          for (int l = 0; l < kLanes; ++l) {
            const A p = softmax_exp(static_cast<A>(row[k0 + l] - shift[l]));  // exact where it matters (Sterbenz)
            sums[l] += p;
            dists[l] += p * distance_to<mode>(sx, sy, tx, ty, k0 + l, half_pow);
          }
      }
    }
    for (int r = 0; r < nu; ++r) {
      // the lanes to the row's max: sum = sum_l sum_l exp(max_l - max), likewise the distances
      A* m = max_lanes[r];
      A lanes[kLanes];
      for (int l = 0; l < kLanes; ++l) lanes[l] = m[l];
      const A row_max_value = tree_max(lanes);
      for (int l = 0; l < kLanes; ++l) {
        const A rescale = softmax_exp(static_cast<A>(m[l] - row_max_value));
        sum_lanes[r][l] *= rescale;
        dist_lanes[r][l] *= rescale;
      }
      const A total = lane_total(sum_lanes[r]);
      rows_out[row0 + r] = lane_total(dist_lanes[r]) / total;
      lse[row0 + r] = log_sum_exp(static_cast<double>(row_max_value), total);
    }
  }
}

// The warp loss's part of two_pass_backward (backward.h): rows are sources, columns targets, f_uv = d_uv (the
// distance term), c~_u = L~_u (the forward's rows), and each row's dlogit carries the upstream gradient g_u.
template <PowMode mode, class S>
struct WarpLossRows {
  using A = compute_t<S>;
  const A* grad_rows;
  const A* src_xy;
  const A* tgt_xy;
  const A* rows_in;
  std::int64_t n_tgt;
  A half_pow;
  A row_value[kTileRows], row_grad[kTileRows], sx[kTileRows], sy[kTileRows];
  A tx[kTileCols], ty[kTileCols];
  static constexpr int kOwnTiles = 0;  // distances are recomputed from the coordinates

  WarpLossRows(const A* grad_rows_, const A* src_xy_, const A* tgt_xy_, const A* rows_in_, std::int64_t n_tgt_,
               A half_pow_)
      : grad_rows(grad_rows_), src_xy(src_xy_), tgt_xy(tgt_xy_), rows_in(rows_in_), n_tgt(n_tgt_), half_pow(half_pow_) {}

  void allocate(std::int64_t) {}

  void begin_rows(std::int64_t, std::int64_t row0, int nu) {
    for (int r = 0; r < nu; ++r) {
      row_value[r] = rows_in[row0 + r];
      row_grad[r] = grad_rows[row0 + r];
      sx[r] = src_xy[2 * (row0 + r)];
      sy[r] = src_xy[2 * (row0 + r) + 1];
    }
  }

  void begin_cols(std::int64_t b, std::int64_t v0, int nv, int, const PackedTiles<A>&, A*, bool) {
    load_coordinates(tgt_xy + (b * n_tgt + v0) * 2, nv, tx, ty);
  }

  A centre(int r) const { return row_value[r]; }

  auto value(int r, const A*) const {
    const A x = sx[r], y = sy[r], half = half_pow;
    const A* xs = tx;
    const A* ys = ty;
    return [x, y, xs, ys, half](int k) { return distance_to<mode>(x, y, xs, ys, k, half); };
  }

  // dlogit_uv = g_u p_uv ((d_uv - L~_u) - e_u / S_u), p = P / S_u
  void dlogit_row(int r, const A* l_row, const A*, A hi, A lo, bool kept, int nv, A excess, A normaliser,
                  A* row) const {
    // row constants in locals: the vectoriser cannot prove the row stores leave them alone
    const A x = sx[r], y = sy[r], half = half_pow;
    const A value = row_value[r];
    const A grad = row_grad[r] * normaliser;
    for (int k = 0; k < kTileCols; ++k) {
      const A p = k < nv ? backward_probability(l_row, k, hi, lo, kept) : A(0);
      row[k] = p * ((distance_to<mode>(x, y, tx, ty, k, half) - value) - excess) * grad;
    }
  }

  void accumulate_cols(A*, int, int) {}
};

template <PowMode mode, class S>
void warp_loss_backward_impl(const compute_t<S>* grad_rows, const S* src, const S* tgt, const compute_t<S>* src_xy,
                             const compute_t<S>* tgt_xy, const compute_t<S>* rows_in, const double* lse,
                             S* grad_src, S* grad_tgt, std::int64_t batch, std::int64_t n_src, std::int64_t n_tgt,
                             std::int64_t channels, double pow, double scale, int num_threads,
                             std::int64_t kept_bytes) {
  const int threads = resolve_threads(num_threads);
  const PackedTiles<compute_t<S>> packed(tgt, batch, n_tgt, channels, true, threads);
  two_pass_backward(src, lse, packed, grad_src, grad_tgt, batch, n_src, n_tgt, channels, scale, threads,
                    WarpLossRows<mode, S>(grad_rows, src_xy, tgt_xy, rows_in, n_tgt,
                                          static_cast<compute_t<S>>(pow / 2)),
                    kept_bytes);
}

}  // namespace detail

template <class S>
void warp_loss_forward(const S* src, const S* tgt, const compute_t<S>* src_xy, const compute_t<S>* tgt_xy,
                       compute_t<S>* rows, double* lse, std::int64_t batch, std::int64_t n_src,
                       std::int64_t n_tgt, std::int64_t channels, double pow, double scale, int num_threads = 0) {
  switch (pow_mode(pow)) {
    case PowMode::quarter_root:
      return detail::warp_loss_forward_impl<PowMode::quarter_root>(src, tgt, src_xy, tgt_xy, rows, lse, batch, n_src,
                                                                   n_tgt, channels, pow, scale, num_threads);
    case PowMode::root:
      return detail::warp_loss_forward_impl<PowMode::root>(src, tgt, src_xy, tgt_xy, rows, lse, batch, n_src, n_tgt,
                                                           channels, pow, scale, num_threads);
    case PowMode::square:
      return detail::warp_loss_forward_impl<PowMode::square>(src, tgt, src_xy, tgt_xy, rows, lse, batch, n_src, n_tgt,
                                                             channels, pow, scale, num_threads);
    default:
      return detail::warp_loss_forward_impl<PowMode::general>(src, tgt, src_xy, tgt_xy, rows, lse, batch, n_src,
                                                              n_tgt, channels, pow, scale, num_threads);
  }
}

template <class S>
void warp_loss_backward(const compute_t<S>* grad_rows, const S* src, const S* tgt, const compute_t<S>* src_xy,
                        const compute_t<S>* tgt_xy, const compute_t<S>* rows, const double* lse, S* grad_src,
                        S* grad_tgt, std::int64_t batch, std::int64_t n_src, std::int64_t n_tgt, std::int64_t channels,
                        double pow, double scale, int num_threads = 0, std::int64_t kept_bytes = kKeptBytes) {
  switch (pow_mode(pow)) {
    case PowMode::quarter_root:
      return detail::warp_loss_backward_impl<PowMode::quarter_root>(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse,
                                                                    grad_src, grad_tgt, batch, n_src, n_tgt, channels,
                                                                    pow, scale, num_threads, kept_bytes);
    case PowMode::root:
      return detail::warp_loss_backward_impl<PowMode::root>(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, grad_src,
                                                            grad_tgt, batch, n_src, n_tgt, channels, pow, scale,
                                                            num_threads, kept_bytes);
    case PowMode::square:
      return detail::warp_loss_backward_impl<PowMode::square>(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, grad_src,
                                                              grad_tgt, batch, n_src, n_tgt, channels, pow, scale,
                                                              num_threads, kept_bytes);
    default:
      return detail::warp_loss_backward_impl<PowMode::general>(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse,
                                                               grad_src, grad_tgt, batch, n_src, n_tgt, channels, pow,
                                                               scale, num_threads, kept_bytes);
  }
}

}  // namespace DVE_ISA_NS
}  // namespace dve
