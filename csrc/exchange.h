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
// p = P / S_u are this backward's own probabilities P = exp(logit - lse) normalised by their sum S_u, and
// D_u = D~_u + (sum_w P_uw (dP_uw - D~_u)) / S_u with D~_u = <dO_u, out_u> (flash attention's estimate): a
// statistics pass per query tile, then dlogit element by element as p ((dP - D~) - (D - D~)). Both
// differences are of nearly equal numbers where p matters, so a peaked (one-hot) row cancels exactly, as
// in the dense computation; FlashAttention's D~ alone is off by ~1e-5 |dP| there (float32 outputs).
//   grad_query_u = scale * sum_w dlogit_uw aux_w
//   grad_aux_w   = scale * sum_u dlogit_uw query_u  +  sum_u p_uw dO_u        (key + value roles)
// Then one pass over all (u, w) pairs: tasks are (batch, fixed chunk of query tiles); each chunk adds
// its grad_aux contribution into a private workspace, and the chunks are summed in chunk order at
// the end. No atomics, no order that depends on the threads.
#pragma once

#include "common.h"

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

template <class S>
void exchange_backward(const S* grad_out, const S* query, const S* aux, const S* out, const double* lse,
                       S* grad_query, S* grad_aux, std::int64_t batch, std::int64_t n_query, std::int64_t n_aux,
                       std::int64_t channels, double scale, int num_threads = 0) {
  using A = compute_t<S>;
  const std::int64_t padded = padded_channels<A>(channels);
  const std::int64_t query_tiles = ceil_div(n_query, kTileRows);
  const std::int64_t aux_tiles = ceil_div(n_aux, kTileCols);
  const std::int64_t aux_rows_padded = aux_tiles * kTileCols;
  const std::int64_t chunks = backward_chunks(batch, query_tiles);
  const std::int64_t tasks = batch * chunks;
  const A scale_a = static_cast<A>(scale);
  const int threads = resolve_threads(num_threads);
  const PackedTiles<A> packed(aux, batch, n_aux, channels, true, threads);

  // grad_aux partial sums, one per (chunk, batch): O(chunks * B * M * C), never N x M.
  std::vector<A> partial(static_cast<std::size_t>(chunks * batch * aux_rows_padded * padded), A(0));

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t task = 0; task < tasks; ++task) {
    const std::int64_t b = task / chunks;
    const std::int64_t chunk = task % chunks;
    const std::int64_t tile_begin = chunk * query_tiles / chunks;
    const std::int64_t tile_end = (chunk + 1) * query_tiles / chunks;
    A* grad_aux_part = partial.data() + (chunk * batch + b) * aux_rows_padded * padded;

    std::vector<A> q_tile(kTileRows * padded), dout_tile(kTileRows * padded), grad_q(kTileRows * padded);
    std::vector<A> prob(kTileRows * kTileCols), dlogit(kTileRows * kTileCols);
    std::vector<A> logits(kTileRows * kTileCols), dp(kTileRows * kTileCols);
    A delta[kTileRows];
    A lse_hi[kTileRows], lse_lo[kTileRows];
    A row_excess[kTileRows], row_scale[kTileRows];
    A sum_lanes[kTileRows][kLanes], excess_lanes[kTileRows][kLanes];

    for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const std::int64_t u0 = tile * kTileRows;
      const int nu = static_cast<int>(std::min<std::int64_t>(kTileRows, n_query - u0));
      const int rows = round_up(nu, kMicroRows);
      const std::int64_t row0 = b * n_query + u0;
      load_rows(q_tile.data(), kTileRows, query + row0 * channels, nu, channels, padded, scale_a);
      load_rows(dout_tile.data(), kTileRows, grad_out + row0 * channels, nu, channels, padded, A(1));
      std::fill(grad_q.begin(), grad_q.end(), A(0));
      for (int r = 0; r < nu; ++r) {
        A d = A(0);
        const S* out_row = out + (row0 + r) * channels;
        const A* dout_row = dout_tile.data() + r * padded;
        for (std::int64_t c = 0; c < channels; ++c) d += dout_row[c] * storage_traits<S>::load(out_row[c]);
        delta[r] = d;
        const split_lse<A> split(lse[row0 + r]);
        lse_hi[r] = split.hi;
        lse_lo[r] = split.lo;
      }

      // Pass 1, statistics of this backward's own probabilities: S_u = sum_w P_uw and
      // e_u = sum_w P_uw (dP_uw - D~_u). The row term of the softmax Jacobian is D_u = sum_w p_uw dP_uw with
      // p = P / S, i.e. D_u = D~_u + e_u / S_u. Each term of e_u is a small difference of nearly equal numbers,
      // exact where it matters (Sterbenz), so D_u is as consistent with dP as the dense computation's own
      // sum_w p dP, which is what makes dP - D cancel exactly for a peaked (one-hot) row.
      for (int r = 0; r < nu; ++r) {
        for (int l = 0; l < kLanes; ++l) sum_lanes[r][l] = excess_lanes[r][l] = A(0);
      }
      for (std::int64_t v0 = 0; v0 < n_aux; v0 += kTileCols) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_aux - v0));
        const A* aux_t = packed.transposed_of(b, v0);
        tile_logits(q_tile.data(), padded, aux_t, channels, rows, logits.data());
        tile_logits(dout_tile.data(), padded, aux_t, channels, rows, dp.data());
        for (int r = 0; r < nu; ++r) {
          const A* l_row = logits.data() + r * kTileCols;
          const A* d_row = dp.data() + r * kTileCols;
          add_mass_and_excess(l_row, lse_hi[r], lse_lo[r], nv, delta[r], [&](int k) { return d_row[k]; },
                              sum_lanes[r], excess_lanes[r]);
        }
      }
      for (int r = 0; r < nu; ++r) {
        row_scale[r] = A(1) / lane_total(sum_lanes[r]);
        row_excess[r] = lane_total(excess_lanes[r]) * row_scale[r];  // e_u / S_u = D_u - D~_u
      }

      // Pass 2: dlogit_uw = p_uw ((dP_uw - D~_u) - e_u / S_u), element by element.
      for (std::int64_t v0 = 0; v0 < n_aux; v0 += kTileCols) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_aux - v0));
        const int aux_rows_count = round_up(nv, kMicroRows);
        const A* aux_t = packed.transposed_of(b, v0);
        tile_logits(q_tile.data(), padded, aux_t, channels, rows, logits.data());
        tile_logits(dout_tile.data(), padded, aux_t, channels, rows, dp.data());  // <dO_u, aux_w>
        for (int r = 0; r < nu; ++r) {
          const A* l_row = logits.data() + r * kTileCols;
          const A* dp_row = dp.data() + r * kTileCols;
          A* p_row = prob.data() + r * kTileCols;
          A* d_row = dlogit.data() + r * kTileCols;
          // row constants in locals: the vectoriser cannot prove the row stores leave them alone
          const A hi = lse_hi[r], lo = lse_lo[r];
          const A row_delta = delta[r], excess = row_excess[r], normaliser = row_scale[r];
          for (int k = 0; k < kTileCols; ++k) {
            const A p = k < nv ? softmax_exp(static_cast<A>((l_row[k] - hi) - lo)) * normaliser : A(0);
            p_row[k] = p;
            d_row[k] = p * (static_cast<A>(dp_row[k] - row_delta) - excess);
          }
        }
        // grad_q += dlogit @ aux;  grad_aux += dlogit^T @ (scale q) + P^T @ dO
        accumulate_rows(grad_q.data(), dlogit.data(), kTileCols, 1, rows, packed.rows_of(b, v0), nv, padded);
        A* grad_aux_rows = grad_aux_part + v0 * padded;
        accumulate_rows(grad_aux_rows, dlogit.data(), 1, kTileCols, aux_rows_count, q_tile.data(), nu, padded);
        accumulate_rows(grad_aux_rows, prob.data(), 1, kTileCols, aux_rows_count, dout_tile.data(), nu, padded);
      }

      for (int r = 0; r < nu; ++r) {
        const A* g = grad_q.data() + r * padded;
        S* dst = grad_query + (row0 + r) * channels;
        for (std::int64_t c = 0; c < channels; ++c) dst[c] = storage_traits<S>::store(g[c] * scale_a);
      }
    }
  }

  sum_chunk_partials(partial, chunks, batch, n_aux, aux_rows_padded, channels, padded, grad_aux, threads);
}

}  // namespace DVE_ISA_NS
}  // namespace dve
