// The two-pass backward that the exchange and the warp loss share (their math: exchange.h, warp_loss.h).
//
// Both ops differentiate a softmax over logit_uv = scale * <x_u, y_v> (x: the row side, query or src; y: the
// column side, aux or tgt) against a per-pair value f_uv (exchange: dP_uw = <dO_u, aux_w>; warp loss: the
// distance term d_uv) whose expectation under the row's softmax the forward estimated as c~_u (exchange: D~_u =
// <dO_u, out_u>; warp loss: the forward's rows L~_u). With this backward's own probabilities P = exp(logit - lse)
// and their row sum S_u:
//   pass 1, per row tile over all column tiles:  S_u = sum_v P_uv,  e_u = sum_v P_uv (f_uv - c~_u)
//   pass 2, the same column tiles again:         dlogit_uv = (P_uv / S_u) ((f_uv - c~_u) - e_u / S_u) (* the op's
//                                                row weight), formed element by element, then
//     grad_x_u = scale * sum_v dlogit_uv y_v,  grad_y_v = scale * sum_u dlogit_uv x_u  (+ the op's own term)
// Each f - c~ is a difference of nearly equal numbers where p matters (Sterbenz), so a peaked (one-hot) row
// cancels exactly, as in the dense computation.
//
// Tasks are (batch, fixed chunk of row tiles); each chunk adds its grad_y contribution into a private workspace,
// summed in chunk order at the end (sum_chunk_partials): no atomics, no order that depends on the threads.
//
// Pass 2 needs the probabilities of pass 1 again (and the exchange its dP tile). When they fit in kKeptBytes per task,
// pass 1 keeps them, one row tile against all columns (O(kTileRows * M), bounded, never N x M), and pass 2 reads them
// back instead of recomputing the logits and dP (two of the exchange backward's N x M x C products, one of the warp
// loss's) and the exponentials; otherwise pass 2 recomputes them. Both give the same bits.
//
// An op supplies a Rows class; each task copies the prototype it is given and calls
//   kOwnTiles                                        how many kTileRows x kTileCols tiles of its own it keeps (0, 1)
//   allocate(padded)                                 its per-task scratch
//   begin_rows(b, row0, nu)                          per row tile: its row constants (rows row0 .. row0 + nu)
//   begin_cols(b, v0, nv, rows, packed, own, compute)   per column tile of either pass (coordinates; with compute,
//                                                    its own tiles, e.g. dP, into own)
//   centre(r)                                        c~_u of row r of the tile
//   value(r, own)                                    a functor k -> f_uv for row r and column v0 + k
//   dlogit_row(r, row, own, hi, lo, kept, nv, e / S, 1 / S, out)   pass 2's dlogit row (kTileCols entries, 0 past nv)
//                                                    from the row's probabilities (backward_probability)
//   accumulate_cols(grad_y, count, nu)               pass 2's own addition to grad_y's tile (may do nothing)
#pragma once

#include <memory>

#include "common.h"

namespace dve {
inline namespace DVE_ISA_NS {

constexpr std::int64_t kKeptBytes = std::int64_t(32) << 20;  // per task (so per thread at a time)

template <class S, class Rows>
void two_pass_backward(const S* x, const double* lse, const PackedTiles<compute_t<S>>& packed, S* grad_x, S* grad_y,
                       std::int64_t batch, std::int64_t n_rows, std::int64_t n_cols, std::int64_t channels,
                       double scale, int threads, const Rows& prototype, std::int64_t kept_bytes = kKeptBytes) {
  using A = compute_t<S>;
  const std::int64_t padded = padded_channels<A>(channels);
  const std::int64_t row_tiles = ceil_div(n_rows, kTileRows);
  const std::int64_t col_tiles = ceil_div(n_cols, kTileCols);
  const std::int64_t cols_padded = col_tiles * kTileCols;
  const std::int64_t chunks = backward_chunks(batch, row_tiles);
  const std::int64_t tasks = batch * chunks;
  const A scale_a = static_cast<A>(scale);
  // per column tile: the logits tile, then the op's own tiles
  const std::int64_t slot = std::int64_t(kTileRows) * kTileCols * (1 + Rows::kOwnTiles);
  const bool keep = col_tiles * slot * std::int64_t(sizeof(A)) <= kept_bytes;

  // grad_y partial sums, one per (chunk, batch): O(chunks * B * M * C), never N x M.
  std::vector<A> partial(static_cast<std::size_t>(chunks * batch * cols_padded * padded), A(0));

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t task = 0; task < tasks; ++task) {
    const std::int64_t b = task / chunks;
    const std::int64_t chunk = task % chunks;
    const std::int64_t tile_begin = chunk * row_tiles / chunks;
    const std::int64_t tile_end = (chunk + 1) * row_tiles / chunks;
    A* grad_y_part = partial.data() + (chunk * batch + b) * cols_padded * padded;

    Rows op(prototype);
    op.allocate(padded);
    std::vector<A> x_tile(kTileRows * padded), grad_x_tile(kTileRows * padded);
    std::unique_ptr<A[]> kept(new A[static_cast<std::size_t>(keep ? col_tiles * slot : slot)]);  // not zeroed
    const auto logits_of = [&](std::int64_t v0) { return kept.get() + (keep ? v0 / kTileCols * slot : 0); };
    std::vector<A> dlogit(kTileRows * kTileCols);
    A lse_hi[kTileRows], lse_lo[kTileRows];
    A row_excess[kTileRows], row_scale[kTileRows];
    A sum_lanes[kTileRows][kLanes], excess_lanes[kTileRows][kLanes];

    for (std::int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const std::int64_t u0 = tile * kTileRows;
      const int nu = static_cast<int>(std::min<std::int64_t>(kTileRows, n_rows - u0));
      const int rows = round_up(nu, kMicroRows);
      const std::int64_t row0 = b * n_rows + u0;
      // The scale is folded into the rows: logit = <scale * x_u, y_v>.
      load_rows(x_tile.data(), kTileRows, x + row0 * channels, nu, channels, padded, scale_a);
      std::fill(grad_x_tile.begin(), grad_x_tile.end(), A(0));
      for (int r = 0; r < nu; ++r) {
        const split_lse<A> split(lse[row0 + r]);
        lse_hi[r] = split.hi;
        lse_lo[r] = split.lo;
      }
      op.begin_rows(b, row0, nu);

      // Pass 1: S_u and e_u, in lanes (see row reductions, common.h).
      for (int r = 0; r < nu; ++r) {
        for (int l = 0; l < kLanes; ++l) sum_lanes[r][l] = excess_lanes[r][l] = A(0);
      }
      for (std::int64_t v0 = 0; v0 < n_cols; v0 += kTileCols) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_cols - v0));
        A* logits = logits_of(v0);
        A* own = logits + kTileRows * kTileCols;
        op.begin_cols(b, v0, nv, rows, packed, own, true);
        tile_logits(x_tile.data(), padded, packed.transposed_of(b, v0), channels, rows, logits);
        for (int r = 0; r < nu; ++r) {
          A* row = logits + r * kTileCols;
          if (keep)
            add_mass_and_excess<true>(row, lse_hi[r], lse_lo[r], nv, op.centre(r), op.value(r, own), sum_lanes[r],
                                      excess_lanes[r]);
          else
            add_mass_and_excess<false>(row, lse_hi[r], lse_lo[r], nv, op.centre(r), op.value(r, own), sum_lanes[r],
                                       excess_lanes[r]);
        }
      }
      for (int r = 0; r < nu; ++r) {
        row_scale[r] = A(1) / lane_total(sum_lanes[r]);
        row_excess[r] = lane_total(excess_lanes[r]) * row_scale[r];  // e_u / S_u = c_u - c~_u
      }

      // Pass 2: dlogit element by element; grad_x += dlogit @ y;  grad_y += dlogit^T @ (scale x) (+ the op's term)
      for (std::int64_t v0 = 0; v0 < n_cols; v0 += kTileCols) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kTileCols, n_cols - v0));
        const int cols_count = round_up(nv, kMicroRows);
        A* logits = logits_of(v0);
        A* own = logits + kTileRows * kTileCols;
        op.begin_cols(b, v0, nv, rows, packed, own, !keep);
        if (!keep) tile_logits(x_tile.data(), padded, packed.transposed_of(b, v0), channels, rows, logits);
        for (int r = 0; r < nu; ++r) {
          op.dlogit_row(r, logits + r * kTileCols, own, lse_hi[r], lse_lo[r], keep, nv, row_excess[r], row_scale[r],
                        dlogit.data() + r * kTileCols);
        }
        accumulate_rows(grad_x_tile.data(), dlogit.data(), kTileCols, 1, rows, packed.rows_of(b, v0), nv, padded);
        A* grad_y_rows = grad_y_part + v0 * padded;
        accumulate_rows(grad_y_rows, dlogit.data(), 1, kTileCols, cols_count, x_tile.data(), nu, padded);
        op.accumulate_cols(grad_y_rows, cols_count, nu);
      }

      for (int r = 0; r < nu; ++r) {
        const A* g = grad_x_tile.data() + r * padded;
        S* dst = grad_x + (row0 + r) * channels;
        for (std::int64_t c = 0; c < channels; ++c) dst[c] = storage_traits<S>::store(g[c] * scale_a);
      }
    }
  }

  sum_chunk_partials(partial, chunks, batch, n_cols, cols_padded, channels, padded, grad_y, threads);
}

}  // namespace DVE_ISA_NS
}  // namespace dve
