// Descriptor Vector Exchange reconstruction (paper eq. 5), fused forward and backward.
//
//   out_u = sum_w p_uw aux_w,   p_uw = softmax_w(scale * <query_u, aux_w>)
//
// aux is keys and values at once: softmax attention with K = V = aux. Shapes: query (B, N, C),
// aux (B, M, C), out (B, N, C), lse (B, N) = log sum_w exp(logit_uw) in double (saved for the backward).
//
// Forward: one task per (batch, tile of kTileRows queries); online softmax over tiles of
// kTileCols aux rows (running max m, running sum l, rescaled accumulator), no N x M buffer.
//
// Backward (flash-attention-2 style recomputation from lse), with dP_uw = <dO_u, aux_w>:
//   dlogit_uw = p_uw (dP_uw - D_u),  D_u = sum_w p_uw dP_uw
//   grad_query_u = scale * sum_w dlogit_uw aux_w
//   grad_aux_w   = scale * sum_u dlogit_uw query_u  +  sum_u p_uw dO_u        (key + value roles)
// computed by two_pass_backward (backward.h) with ExchangeRows below: p = P / S_u are this backward's own
// probabilities, and D_u = D~_u + (sum_w P_uw (dP_uw - D~_u)) / S_u with D~_u = <dO_u, out_u> (flash attention's
// estimate, which alone is off by ~1e-5 |dP| for a peaked row with float32 outputs).
#pragma once

#include "backward.h"

namespace dve {
inline namespace DVE_ISA_NS {

template <class S>
void exchange_forward(const S* query, const S* aux, S* out, double* lse, std::int64_t batch,
                      std::int64_t n_query, std::int64_t n_aux, std::int64_t channels, double scale,
                      int num_threads = 0) {
  using A = compute_t<S>;
  const std::int64_t padded = padded_channels<A>(channels);
  const std::int64_t query_tiles = ceil_div(n_query, kTileRows);
  const std::int64_t tasks = batch * query_tiles;
  const A scale_a = static_cast<A>(scale);
  const int threads = resolve_threads(num_threads);
  const PackedTiles<A> packed(aux, batch, n_aux, channels, true, threads);

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t task = 0; task < tasks; ++task) {
    const std::int64_t b = task / query_tiles;
    const std::int64_t u0 = (task % query_tiles) * kTileRows;
    const int nu = static_cast<int>(std::min<std::int64_t>(kTileRows, n_query - u0));
    const int rows = round_up(nu, kMicroRows);

    std::vector<A> q_tile(kTileRows * padded), acc(kTileRows * padded, A(0)), prob(kTileRows * kTileCols);
    std::vector<A> logits(kTileRows * kTileCols);
    A running_max[kTileRows];
    A sum_lanes[kTileRows][kLanes];  // the running sum of each row, in lanes (see row reductions, common.h)
    for (int r = 0; r < kTileRows; ++r) {
      running_max[r] = -std::numeric_limits<A>::infinity();
      for (int l = 0; l < kLanes; ++l) sum_lanes[r][l] = A(0);
    }
    // The scale is folded into the queries: logit = <scale * q_u, aux_w>.
    load_rows(q_tile.data(), kTileRows, query + (b * n_query + u0) * channels, nu, channels, padded, scale_a);

    for (std::int64_t v0 = 0; v0 < n_aux; v0 += kTileCols) {
      const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_aux - v0));
      tile_logits(q_tile.data(), padded, packed.transposed_of(b, v0), channels, rows, logits.data());

      for (int r = 0; r < nu; ++r) {
        A* row = logits.data() + r * kTileCols;
        A* p_row = prob.data() + r * kTileCols;
        for (int k = nv; k < kTileCols; ++k) row[k] = -std::numeric_limits<A>::infinity();
        const A tile_max = row_max(row);
        const A new_max = tile_max > running_max[r] ? tile_max : running_max[r];
        const A rescale = softmax_exp(static_cast<A>(running_max[r] - new_max));
        A* lanes = sum_lanes[r];
        for (int l = 0; l < kLanes; ++l) lanes[l] *= rescale;
        for (int k0 = 0; k0 < kTileCols; k0 += kLanes)
          for (int l = 0; l < kLanes; ++l) {
            const A p = softmax_exp(static_cast<A>(row[k0 + l] - new_max));  // exact where it matters (Sterbenz)
            p_row[k0 + l] = p;
            lanes[l] += p;
          }
        running_max[r] = new_max;
        A* acc_row = acc.data() + r * padded;
        for (std::int64_t c = 0; c < padded; ++c) acc_row[c] *= rescale;
      }
      // acc += P @ aux_rows (rows past nu of P are stale but finite, and their output is never stored).
      accumulate_rows(acc.data(), prob.data(), kTileCols, 1, rows, packed.rows_of(b, v0), nv, padded);
    }

    for (int r = 0; r < nu; ++r) {
      const A total = lane_total(sum_lanes[r]);
      const A inv = A(1) / total;
      const A* acc_row = acc.data() + r * padded;
      S* out_row = out + (b * n_query + u0 + r) * channels;
      for (std::int64_t c = 0; c < channels; ++c) out_row[c] = storage_traits<S>::store(acc_row[c] * inv);
      lse[b * n_query + u0 + r] = log_sum_exp(static_cast<double>(running_max[r]), total);
    }
  }
}

namespace detail {

// The exchange's part of two_pass_backward (backward.h): rows are queries, columns aux rows, f_uw = dP_uw =
// <dO_u, aux_w>, c~_u = D~_u = <dO_u, out_u>, and grad_aux also gets the value role's P^T dO.
template <class S>
struct ExchangeRows {
  using A = compute_t<S>;
  const S* grad_out;
  const S* out;
  std::int64_t channels;
  std::int64_t padded = 0;
  static constexpr int kOwnTiles = 1;  // the dP tile
  std::vector<A> dout_tile, prob;
  A delta[kTileRows];

  ExchangeRows(const S* grad_out_, const S* out_, std::int64_t channels_)
      : grad_out(grad_out_), out(out_), channels(channels_) {}

  void allocate(std::int64_t padded_channels) {
    padded = padded_channels;
    dout_tile.resize(kTileRows * padded);
    prob.resize(kTileRows * kTileCols);
  }

  void begin_rows(std::int64_t, std::int64_t row0, int nu) {
    load_rows(dout_tile.data(), kTileRows, grad_out + row0 * channels, nu, channels, padded, A(1));
    for (int r = 0; r < nu; ++r) {
      A d = A(0);
      const S* out_row = out + (row0 + r) * channels;
      const A* dout_row = dout_tile.data() + r * padded;
      for (std::int64_t c = 0; c < channels; ++c) d += dout_row[c] * storage_traits<S>::load(out_row[c]);
      delta[r] = d;
    }
  }

  void begin_cols(std::int64_t b, std::int64_t v0, int, int rows, const PackedTiles<A>& packed, A* dp, bool compute) {
    if (compute) tile_logits(dout_tile.data(), padded, packed.transposed_of(b, v0), channels, rows, dp);  // <dO_u, aux_w>
  }

  A centre(int r) const { return delta[r]; }

  auto value(int r, const A* dp) const {
    const A* d_row = dp + r * kTileCols;
    return [d_row](int k) { return d_row[k]; };
  }

  // dlogit_uw = p_uw ((dP_uw - D~_u) - e_u / S_u), p = P / S_u (kept for the value role)
  void dlogit_row(int r, const A* l_row, const A* dp, A hi, A lo, bool kept, int nv, A excess, A normaliser,
                  A* d_row) {
    const A* dp_row = dp + r * kTileCols;
    A* p_row = prob.data() + r * kTileCols;
    const A row_delta = delta[r];  // row constants in locals: the vectoriser cannot prove the stores leave them alone
    for (int k = 0; k < kTileCols; ++k) {
      const A p = k < nv ? backward_probability(l_row, k, hi, lo, kept) * normaliser : A(0);
      p_row[k] = p;
      d_row[k] = p * (static_cast<A>(dp_row[k] - row_delta) - excess);
    }
  }

  void accumulate_cols(A* grad_aux_rows, int aux_rows_count, int nu) {  // the value role: grad_aux += P^T @ dO
    accumulate_rows(grad_aux_rows, prob.data(), 1, kTileCols, aux_rows_count, dout_tile.data(), nu, padded);
  }
};

}  // namespace detail

template <class S>
void exchange_backward(const S* grad_out, const S* query, const S* aux, const S* out, const double* lse,
                       S* grad_query, S* grad_aux, std::int64_t batch, std::int64_t n_query, std::int64_t n_aux,
                       std::int64_t channels, double scale, int num_threads = 0,
                       std::int64_t kept_bytes = kKeptBytes) {
  const int threads = resolve_threads(num_threads);
  const PackedTiles<compute_t<S>> packed(aux, batch, n_aux, channels, true, threads);
  two_pass_backward(query, lse, packed, grad_query, grad_aux, batch, n_query, n_aux, channels, scale, threads,
                    detail::ExchangeRows<S>(grad_out, out, channels), kept_bytes);
}

}  // namespace DVE_ISA_NS
}  // namespace dve
