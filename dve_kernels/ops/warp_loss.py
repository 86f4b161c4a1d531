"""Warp loss rows (paper eq. 3) as fused Triton kernels: an online softmax with a running expected distance.

``L_u = sum_v p(v|u) · ||src_xy_u - tgt_xy_v||^pow``, ``p(v|u) = softmax_v(scale · <src_u, tgt_v>)``.

The distance is computed in registers from the coordinates, never stored. Backward, with the softmax
recomputed from the saved log-sum-exp: ``dlogit_uv = p_uv (d_uv - L_u) · upstream_u``, then
``d src_u = scale · sum_v dlogit_uv tgt_v`` (one kernel per source tile, iterating over target tiles) and
``d tgt_v = scale · sum_u dlogit_uv src_u`` (one kernel per target tile, iterating over source tiles):
deterministic, no atomics, nothing of size N x M. The coordinates get no gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._distance import (
    _distance_power,
    _fourth_root_mufu,
)
from .. import precision
from ._launch import (
    kernel_constexprs,
    launch_plan,
    lse_dtype,
    lse_from_natural,
    lse_to_natural,
    log2_scale,
    make_specialization,
    planar_coordinates,
    POW_FOURTH_ROOT,
    pow_mode,
    POW_MODES,
    specialization_cases,
    split_scalar,
)
from ._tiles import (
    _batch_rows,
    _full_tiles_end,
    _coordinate_stride,
    _dot_nt,
    _exp2_minus_lse,
    _join_scalar,
    _load_rows,
    _load_planar,
    _load_vector,
    _program_rows,
    _softmax_tile,
    _store_lse,
    _store_rows,
)

POW_MODE_NAMES = {0: "pow0.5", 1: "pow1", 2: "pow2", 3: "powany"}


# ----------------------------------------------------------------------------------------------- kernels
#
# Shared structure: each kernel walks the other side in BLOCK tiles, full tiles first with no masks at all,
# then the partial tile (if any) with masks (MASK constexpr of the *_step helpers). EVEN_C (C == C_PAD) gives
# feature rows a compile-time stride (16-byte vector loads). Coordinates and per-row statistics come in planar
# buffers whose planes are 16-element aligned (planar_coordinates, _coordinate_stride), so per-column
# vectors load as vectors too.
#
# 16-bit features, pow = 0.5: the launchers pass coordinates times 2, so the kernels see r2' = 4 r2, which the
# fourth roots of _distance (_fourth_root_newton, _fourth_root_mufu) expect.


@triton.jit
def _squared_distance(x_rows, y_rows, x_cols, y_cols):
    """(x_u - x_v)^2 + (y_u - y_v)^2 for a (rows x cols) tile, plus 1e-30 (so that it is never 0, for rsqrt)."""
    dx = x_rows[:, None] - x_cols[None, :]
    dy = y_rows[:, None] - y_cols[None, :]
    return tl.fma(dx, dx, tl.fma(dy, dy, 1e-30))


@triton.jit
def _warp_loss_fwd_step(src, src_base, offs_n, mask_n, src_x, src_y, tgt_base, tgt_xy_base, XY_STRIDE, start_m, M, C,
                   m_i, l_i, acc, scale_log2e, pow_half,
                   C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr, POW_MODE: tl.constexpr,
                   IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, MASK_M: tl.constexpr, MUFU_ROOT: tl.constexpr,
                   DOT: tl.constexpr):
    """One BLOCK_M tile of targets: the online-softmax update of (m_i, l_i, acc). MASK_M: the partial tile.

    MUFU_ROOT (16-bit, pow = 0.5): this tile takes its fourth roots from two MUFU rsqrt instead of one rsqrt
    and Newton steps (see the kernel)."""
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    tgt_x = _load_vector(tgt_xy_base, offs_m, mask_m, MASK_M)
    tgt_y = _load_vector(tgt_xy_base + XY_STRIDE, offs_m, mask_m, MASK_M)
    r2 = _squared_distance(src_x, src_y, tgt_x, tgt_y)
    if src.dtype.primitive_bitwidth < 32:
        tgt = _load_rows(tgt_base, offs_m, mask_m, C, C_PAD, EVEN_C, MASK_M)
        logits = tl.dot(src, tl.trans(tgt), out_dtype=acc_dtype)  # unscaled, see _softmax_tile
        m_new, p = _softmax_tile(logits, m_i, mask_m, scale_log2e, False, MASK_M)
        if MUFU_ROOT:
            dist_sum = tl.sum(p * _fourth_root_mufu(r2), 1) * 0.7071067811865476  # rsqrt(rsqrt(4 r2)) = sqrt(2) d
        else:
            dist_sum = tl.sum(p * _distance_power(r2, pow_half, POW_MODE, IS_FP64, True), 1)
    else:
        # DOT: float32 never silently runs in TF32 (dve_kernels/precision.py); the tgt tile is read inside _dot_nt
        logits = _dot_nt(src_base, offs_n, mask_n, src, tgt_base, offs_m, mask_m, src, C, scale_log2e,
                         True, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
        m_new, p = _softmax_tile(logits, m_i, mask_m, scale_log2e, True, MASK_M, P_DTYPE=acc_dtype)
        dist_sum = tl.sum(p * _distance_power(r2, pow_half, POW_MODE, IS_FP64).to(acc_dtype), 1)
    alpha = tl.exp2((m_i - m_new).to(acc_dtype))  # rescales what was accumulated under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha + dist_sum
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_loss_fwd_kernel(
    Src, Tgt, SrcXY, TgtXY, Rows, Lse,
    N, M, C,
    SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    """L_u and the log2-sum-exp2 of row u, one source tile per program, iterating over target tiles.

    16-bit features at pow = 0.5 spend two MUFU operations per pair (exp2 and the rsqrt of the fourth root)
    and ~9 FMA-pipe ones on the root; every third target tile instead takes the root from two rsqrt (three
    MUFU, two issue slots), which balances the MUFU and issue limits of an H100 (bench/kernel_report.py).
    """
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)
    batch, offs_n, mask_n, src_base, src = _program_rows(Src, N, C, BLOCK_N, C_PAD, EVEN_C)
    if src.dtype.primitive_bitwidth < 32:  # negating 16-bit values is exact: logits * scale = (-src)·tgt * |scale|
        src = tl.where(scale_log2e < 0, -src, src)
        scale_log2e = tl.abs(scale_log2e)
    src_x, src_y, _, _ = _load_planar(SrcXY, batch, N, offs_n, mask_n, 2)
    tgt_base = _batch_rows(Tgt, batch, M, C, C_PAD, EVEN_C)
    tgt_xy_stride = _coordinate_stride(M)
    tgt_xy_base = TgtXY + batch * 2 * tgt_xy_stride

    m_i = tl.full([BLOCK_N], float("-inf"), acc_dtype)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_N], acc_dtype)  # running sum of exp2(logit - m_i)
    acc = tl.zeros([BLOCK_N], acc_dtype)  # running sum of exp2(logit - m_i) * distance
    full_m = _full_tiles_end(M, BLOCK_M, LOW_PRECISION=src.dtype.primitive_bitwidth < 32)
    if (src.dtype.primitive_bitwidth < 32) and (POW_MODE == 0):
        first_m = M - M % (3 * BLOCK_M)
        for start_m in range(0, first_m, 3 * BLOCK_M):
            m_i, l_i, acc = _warp_loss_fwd_step(src, src_base, offs_n, mask_n, src_x, src_y, tgt_base, tgt_xy_base,
                                           tgt_xy_stride, start_m, M, C, m_i, l_i, acc, scale_log2e, pow_half,
                                           C_PAD, BLOCK_M, K_CHUNK, POW_MODE, IS_FP64, EVEN_C, False, False, DOT)
            m_i, l_i, acc = _warp_loss_fwd_step(src, src_base, offs_n, mask_n, src_x, src_y, tgt_base, tgt_xy_base,
                                           tgt_xy_stride, start_m + BLOCK_M, M, C, m_i, l_i, acc, scale_log2e,
                                           pow_half, C_PAD, BLOCK_M, K_CHUNK, POW_MODE, IS_FP64, EVEN_C, False,
                                           False, DOT)
            m_i, l_i, acc = _warp_loss_fwd_step(src, src_base, offs_n, mask_n, src_x, src_y, tgt_base, tgt_xy_base,
                                           tgt_xy_stride, start_m + 2 * BLOCK_M, M, C, m_i, l_i, acc, scale_log2e,
                                           pow_half, C_PAD, BLOCK_M, K_CHUNK, POW_MODE, IS_FP64, EVEN_C, False,
                                           True, DOT)
    else:
        first_m = 0
    for masked in tl.static_range(2):  # the (other) full tiles with no masks, then the partial tile (if any)
        for start_m in range(full_m if masked else first_m, M if masked else full_m, BLOCK_M):
            m_i, l_i, acc = _warp_loss_fwd_step(src, src_base, offs_n, mask_n, src_x, src_y, tgt_base, tgt_xy_base,
                                           tgt_xy_stride, start_m, M, C, m_i, l_i, acc, scale_log2e, pow_half,
                                           C_PAD, BLOCK_M, K_CHUNK, POW_MODE, IS_FP64, EVEN_C, masked == 1, False, DOT)

    tl.store(Rows + batch * N + offs_n, acc / l_i, mask=mask_n)
    _store_lse(Lse, batch, N, offs_n, mask_n, m_i, l_i, src.dtype.primitive_bitwidth < 32)


@triton.jit
def _warp_loss_bwd_src_step(src, src_base, offs_n, mask_n, src_x, src_y, lse, tgt_base, tgt_xy_base, XY_STRIDE,
                       start_m, M, C, p_dist_tgt, p_tgt, p_dist, row_sum, rows_est, scale_log2e, pow_half,
                       C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr, POW_MODE: tl.constexpr,
                       IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, MASK_M: tl.constexpr, DOT: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    tgt = _load_rows(tgt_base, offs_m, mask_m, C, C_PAD, EVEN_C, MASK_M)
    tgt_x = _load_vector(tgt_xy_base, offs_m, mask_m, MASK_M)
    tgt_y = _load_vector(tgt_xy_base + XY_STRIDE, offs_m, mask_m, MASK_M)
    logits = _dot_nt(src_base, offs_n, mask_n, src, tgt_base, offs_m, mask_m, tgt, C, scale_log2e,
                     True, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
    p = _exp2_minus_lse(logits, lse, acc_dtype)
    if MASK_M:
        p = tl.where(mask_m[None, :], p, 0.0)
    low_precision: tl.constexpr = src.dtype.primitive_bitwidth < 32
    dist = _distance_power(_squared_distance(src_x, src_y, tgt_x, tgt_y), pow_half, POW_MODE, IS_FP64,
                           low_precision).to(acc_dtype)
    pd = p * (dist - rows_est[:, None])  # a small difference where p is large: exact there (Sterbenz)
    row_sum += tl.sum(p, 1)
    p_dist += tl.sum(pd, 1)
    p_dist_tgt += tl.dot(pd.to(tgt.dtype), tgt, input_precision=DOT, out_dtype=acc_dtype)
    p_tgt += tl.dot(p.to(tgt.dtype), tgt, input_precision=DOT, out_dtype=acc_dtype)
    return p_dist_tgt, p_tgt, p_dist, row_sum


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_loss_bwd_src_kernel(
    GradRows, Src, Tgt, SrcXY, TgtXY, Rows, Lse, Stats, GradSrc,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    """d src_u = scale · upstream_u · sum_v p_uv (d_uv - L_u) tgt_v, one source tile per program.

    p = P / S_u with this kernel's own P = exp2(logit - lse) and S_u = sum_v P_uv (the row normalisation also
    removes the common error of the stored lse), and L_u = sum_v p_uv d_uv. For peaked rows d_uv - L_u is a
    difference of nearly equal numbers: the forward's L~_u (``Rows``, rounded through a differently rescaled
    p) is ~1e-5 off there, and so is a difference of large accumulated sums (sum p d tgt - L sum p tgt). So one
    pass accumulates, with r_uv = d_uv - L~_u, A = sum_v P r tgt_v, s = sum_v P tgt_v, e = sum_v P r, S; then
    L_u - L~_u = e / S and d src = (A - (e / S) s) / S · upstream · scale, both terms small where the row is
    peaked. For the tgt kernel it writes the planar per-row statistics Stats (B, 3, stride): L~_u, e / S and
    upstream_u / S_u, from which it forms p ((d - L~) - e / S) per element.
    """
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)
    batch, offs_n, mask_n, src_base, src = _program_rows(Src, N, C, BLOCK_N, C_PAD, EVEN_C)
    src_x, src_y, _, row_stride = _load_planar(SrcXY, batch, N, offs_n, mask_n, 2)
    lse = tl.load(Lse + batch * N + offs_n, mask=mask_n, other=0.0)
    upstream = tl.load(GradRows + batch * N + offs_n, mask=mask_n, other=0.0).to(acc_dtype)
    rows_est = tl.load(Rows + batch * N + offs_n, mask=mask_n, other=0.0).to(acc_dtype)  # L~_u
    tgt_base = _batch_rows(Tgt, batch, M, C, C_PAD, EVEN_C)
    tgt_xy_stride = _coordinate_stride(M)
    tgt_xy_base = TgtXY + batch * 2 * tgt_xy_stride

    p_dist_tgt = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # A = sum_v P (d - L~) tgt_v
    p_tgt = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # s = sum_v P tgt_v
    p_dist = tl.zeros([BLOCK_N], acc_dtype)  # e = sum_v P (d - L~)
    row_sum = tl.zeros([BLOCK_N], acc_dtype)  # sum_v p
    full_m = _full_tiles_end(M, BLOCK_M, LOW_PRECISION=src.dtype.primitive_bitwidth < 32)
    for masked in tl.static_range(2):  # the full tiles with no masks, then the partial tile (if any) with them
        for start_m in range(full_m if masked else 0, M if masked else full_m, BLOCK_M):
            p_dist_tgt, p_tgt, p_dist, row_sum = _warp_loss_bwd_src_step(
                src, src_base, offs_n, mask_n, src_x, src_y, lse, tgt_base, tgt_xy_base, tgt_xy_stride, start_m, M,
                C, p_dist_tgt, p_tgt, p_dist, row_sum, rows_est, scale_log2e, pow_half, C_PAD, BLOCK_M, K_CHUNK,
                POW_MODE, IS_FP64, EVEN_C, masked == 1, DOT)

    row_scale = 1.0 / tl.where(mask_n, row_sum, 1.0)
    excess = p_dist * row_scale  # L_u - L~_u
    stats_base = Stats + batch * 3 * row_stride + offs_n
    tl.store(stats_base, rows_est, mask=mask_n)
    tl.store(stats_base + row_stride, excess, mask=mask_n)
    tl.store(stats_base + 2 * row_stride, upstream * row_scale, mask=mask_n)
    grad_src = (p_dist_tgt - excess[:, None] * p_tgt) * (row_scale * upstream * scale)[:, None]
    _store_rows(_batch_rows(GradSrc, batch, N, C, C_PAD, EVEN_C), offs_n, mask_n, grad_src, C, C_PAD, EVEN_C)


@triton.jit
def _warp_loss_bwd_tgt_step(tgt, tgt_base, offs_m, mask_m, tgt_x, tgt_y, src_base, src_xy_base, lse_base, stats_base,
                       ROW_STRIDE,
                       start_n, N, C, grad_tgt, scale_log2e, pow_half,
                       C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, K_CHUNK: tl.constexpr, POW_MODE: tl.constexpr,
                       IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, MASK_N: tl.constexpr, DOT: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    src = _load_rows(src_base, offs_n, mask_n, C, C_PAD, EVEN_C, MASK_N)
    src_x = _load_vector(src_xy_base, offs_n, mask_n, MASK_N)
    src_y = _load_vector(src_xy_base + ROW_STRIDE, offs_n, mask_n, MASK_N)
    lse = _load_vector(lse_base, offs_n, mask_n, MASK_N)
    rows_est = _load_vector(stats_base, offs_n, mask_n, MASK_N)
    excess = _load_vector(stats_base + ROW_STRIDE, offs_n, mask_n, MASK_N)
    weight = _load_vector(stats_base + 2 * ROW_STRIDE, offs_n, mask_n, MASK_N)  # rows past N: weight 0
    if tgt.dtype.primitive_bitwidth >= 32:
        # 32/64-bit: the very expressions of the src kernel (operands, orientation, tile shape), so p
        # and d are bitwise the ones L_u and the row scale were built from (see the exchange aux kernel)
        logits = _dot_nt(src_base, offs_n, mask_n, src, tgt_base, offs_m, mask_m, tgt, C, scale_log2e, True,
                         C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
        p = tl.where(mask_m[None, :], _exp2_minus_lse(logits, lse, acc_dtype), 0.0)
        dist = _distance_power(_squared_distance(src_x, src_y, tgt_x, tgt_y), pow_half, POW_MODE,
                               IS_FP64).to(acc_dtype)
        dlogit_t = tl.trans(p * ((dist - rows_est[:, None]) - excess[:, None]) * weight[:, None])
    else:
        # 16-bit: transposed tiles (target rows x source columns): the reduction over u is a plain dot
        p_t = tl.exp2(tl.dot(tgt, tl.trans(src), out_dtype=acc_dtype) * scale_log2e - lse[None, :])
        dist_t = _distance_power(_squared_distance(tgt_x, tgt_y, src_x, src_y), pow_half, POW_MODE, IS_FP64, True)
        dlogit_t = p_t * ((dist_t - rows_est[None, :]) - excess[None, :]) * weight[None, :]
    grad_tgt += tl.dot(dlogit_t.to(src.dtype), src, input_precision=DOT, out_dtype=acc_dtype)
    return grad_tgt


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_loss_bwd_tgt_kernel(
    GradRows, Src, Tgt, SrcXY, TgtXY, Lse, Stats, GradTgt,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    """d tgt_v = scale · sum_u p_uv (d_uv - L_u) upstream_u · src_u, one target tile per program."""
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)
    batch, offs_m, mask_m, tgt_base, tgt = _program_rows(Tgt, M, C, BLOCK_M, C_PAD, EVEN_C)
    tgt_x, tgt_y, _, _ = _load_planar(TgtXY, batch, M, offs_m, mask_m, 2)
    src_base = _batch_rows(Src, batch, N, C, C_PAD, EVEN_C)
    row_stride = _coordinate_stride(N)
    src_xy_base = SrcXY + batch * 2 * row_stride
    stats_base = Stats + batch * 3 * row_stride
    lse_base = Lse + batch * N

    grad_tgt = tl.zeros([BLOCK_M, C_PAD], acc_dtype)
    full_n = _full_tiles_end(N, BLOCK_N, LOW_PRECISION=tgt.dtype.primitive_bitwidth < 32)
    for masked in tl.static_range(2):  # the full tiles with no masks, then the partial tile (if any) with them
        for start_n in range(full_n if masked else 0, N if masked else full_n, BLOCK_N):
            grad_tgt = _warp_loss_bwd_tgt_step(tgt, tgt_base, offs_m, mask_m, tgt_x, tgt_y, src_base, src_xy_base,
                                          lse_base, stats_base, row_stride, start_n, N, C, grad_tgt, scale_log2e,
                                          pow_half, C_PAD, BLOCK_N, K_CHUNK, POW_MODE, IS_FP64, EVEN_C, masked == 1,
                                          DOT)

    _store_rows(_batch_rows(GradTgt, batch, M, C, C_PAD, EVEN_C), offs_m, mask_m, grad_tgt * scale, C, C_PAD, EVEN_C)


# --------------------------------------------------------------------------------------------- launchers


def _coordinates(xy: torch.Tensor, batch: int, features: torch.Tensor, pow: float) -> torch.Tensor:
    """Coordinates as the kernels read them: planar (B, 2, rows rounded up to 16), float64 for float64 features
    else float32 (see planar_coordinates); times 2 for 16-bit features at pow = 0.5 (see the kernels' header)."""
    if xy.dim() == 2:  # (M, 2) shared by every pair: expanded, which copies O(B·M), never O(N·M)
        xy = xy.unsqueeze(0).expand(batch, -1, -1)
    return planar_coordinates(xy, precision.accumulate_dtype(features.dtype), 2.0 if _doubles_coordinates(features, pow) else 1.0)


def _doubles_coordinates(features: torch.Tensor, pow: float) -> bool:
    return features.element_size() == 2 and pow_mode(pow) == POW_FOURTH_ROOT


def _non_finite_marker(src_xy: torch.Tensor, tgt_xy: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, 1): 0, or NaN where a pair has a non-finite coordinate. The rsqrt-based fourth roots of 16-bit
    features return a finite number for r2 = inf; adding this keeps "non-finite inputs give a non-finite
    loss" (docs/contract.md section 4). O(B·(N + M)), no host synchronisation."""
    marker = (src_xy * 0).sum(dim=(-2, -1)).reshape(-1, 1)
    tgt_marker = (tgt_xy * 0).sum(dim=(-2, -1)).reshape(-1, 1)
    return (marker + tgt_marker).expand(batch, 1)


def warp_loss_forward(src, tgt, src_xy, tgt_xy, pow: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused warp-loss forward.

    Args:
        src: ``(B, N, C)``; tgt: ``(B, M, C)`` (same float dtype and device; any strides).
        src_xy: ``(B, N, 2)``; tgt_xy: ``(B, M, 2)`` (or ``(M, 2)``), pixel coordinates.
        pow: the distance power (> 0); scale: the softmax temperature.

    Returns:
        ``rows`` ``(B, N)`` = ``L_u``, float32 (float64 for float64 features), and ``lse`` ``(B, N)`` float64,
        the natural log-sum-exp of scale·logits (the one convention of every backend, see _library.py).
    """
    plan = launch_plan("warp_loss_fwd", src, tgt, pow_mode(pow))
    src, tgt, batch, n = plan.rows, plan.cols, plan.batch, plan.n
    src_planar = _coordinates(src_xy, batch, src, pow)
    tgt_planar = _coordinates(tgt_xy, batch, src, pow)
    stat_dtype = precision.accumulate_dtype(src.dtype)
    rows = torch.empty((batch, n), dtype=stat_dtype, device=src.device)
    lse = torch.empty((batch, n), dtype=lse_dtype(src.dtype), device=src.device)
    _warp_loss_fwd_kernel[(triton.cdiv(n, plan.config.block_n), batch)](
        src, tgt, src_planar, tgt_planar, rows, lse, n, plan.m, plan.c,
        *split_scalar(log2_scale(scale)), *split_scalar(0.5 * pow), **plan.constexprs, **plan.options)
    if _doubles_coordinates(src, pow):
        rows = rows + _non_finite_marker(src_xy, tgt_xy, batch)
    return rows, lse_to_natural(lse)


def warp_loss_backward(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow: float, scale: float):
    """Fused warp-loss backward: ``grad_rows`` ``(B, N)`` -> ``grad_src`` ``(B, N, C)``, ``grad_tgt`` ``(B, M, C)``.

    ``rows`` and ``lse`` ``(B, N)`` come from :func:`warp_loss_forward`; ``rows`` is the estimate L~_u that
    the src kernel corrects with this backward's own probabilities (see _warp_loss_bwd_src_kernel).
    """
    plan = launch_plan("warp_loss_bwd", src, tgt, pow_mode(pow))
    src, tgt, batch, n, m, c = plan.rows, plan.cols, plan.batch, plan.n, plan.m, plan.c
    rows = rows.contiguous()
    lse = lse_from_natural(lse, src.dtype)
    src_planar = _coordinates(src_xy, batch, src, pow)
    tgt_planar = _coordinates(tgt_xy, batch, src, pow)
    grad_rows = grad_rows.contiguous().to(rows.dtype)
    grad_src = torch.empty(src.shape, dtype=src.dtype, device=src.device)
    grad_tgt = torch.empty(tgt.shape, dtype=tgt.dtype, device=tgt.device)
    # O(B·N), the only extra buffer: L~_u, L_u - L~_u and upstream / sum_v P per source row, written by
    # the src kernel for the tgt kernel, planar like the coordinates (see _warp_loss_bwd_src_kernel)
    stats = torch.empty((batch, 3, src_planar.shape[-1]), dtype=rows.dtype, device=src.device)
    scalars = (*split_scalar(scale), *split_scalar(log2_scale(scale)), *split_scalar(0.5 * pow))
    _warp_loss_bwd_src_kernel[(triton.cdiv(n, plan.config.block_n), batch)](
        grad_rows, src, tgt, src_planar, tgt_planar, rows, lse, stats, grad_src, n, m, c, *scalars, **plan.constexprs,
        **plan.options)
    _warp_loss_bwd_tgt_kernel[(triton.cdiv(m, plan.config.block_m), batch)](
        grad_rows, src, tgt, src_planar, tgt_planar, lse, stats, grad_tgt, n, m, c, *scalars, **plan.constexprs, **plan.options)
    return grad_src, grad_tgt


def warp_loss_specializations() -> list:
    """Every (kernel, constexprs, warps, stages) the launchers above can pick, for AOT compilation."""
    specs = []
    for case in specialization_cases():
        feat, stat = case.feat, case.stat
        for mode in POW_MODES:
            name = f"{case.tag}_{POW_MODE_NAMES[mode]}{case.ragged}"
            constexprs, config = kernel_constexprs("warp_loss_fwd", case.c_pad, case.dtype, case.even_c, case.dot, mode)
            specs.append(make_specialization(
                f"warp_loss_fwd_{name}", _warp_loss_fwd_kernel,
                dict(Src=feat, Tgt=feat, SrcXY=stat, TgtXY=stat, Rows=stat, Lse=case.lse, **case.ints,
                     **case.scalars("SCALE_LOG2E", "POW_HALF")),
                constexprs, config,
                tiles_per_iteration=3 if case.dtype.itemsize == 2 and mode == POW_FOURTH_ROOT else 1))
            constexprs, config = kernel_constexprs("warp_loss_bwd", case.c_pad, case.dtype, case.even_c, case.dot, mode)
            arg_types = dict(GradRows=stat, Src=feat, Tgt=feat, SrcXY=stat, TgtXY=stat, Rows=stat, Lse=case.lse,
                             Stats=stat, GradSrc=feat, GradTgt=feat, **case.ints,
                             **case.scalars("SCALE", "SCALE_LOG2E", "POW_HALF"))
            specs.append(make_specialization(
                f"warp_loss_bwd_src_{name}", _warp_loss_bwd_src_kernel, arg_types, constexprs, config))
            specs.append(make_specialization(
                f"warp_loss_bwd_tgt_{name}", _warp_loss_bwd_tgt_kernel, arg_types, constexprs, config))
    return specs
