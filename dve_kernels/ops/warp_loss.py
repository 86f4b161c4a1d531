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

from ._common import (
    CHANNEL_PADS,
    FEATURE_DTYPES,
    POW_MODES,
    _distance_power,
    _join_scalar,
    _dot_nt,
    accumulator_dtype,
    channel_pad,
    check_runnable,
    launch_config,
    log2_scale,
    make_specialization,
    pow_mode,
    split_scalar,
    triton_type,
)

POW_MODE_NAMES = {0: "pow0.5", 1: "pow1", 2: "pow2", 3: "powany"}


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_fwd_kernel(
    Src, Tgt, SrcXY, TgtXY, Rows, Lse,
    N, M, C,
    SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    pid_n = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)  # int64: batch * N * C can pass 2^31
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, C_PAD)
    mask_n = offs_n < N
    mask_c = offs_c < C  # padded channels read as 0 and add nothing to the dot products
    src_base = Src + batch * N * C
    src = tl.load(src_base + offs_n[:, None] * C + offs_c[None, :], mask=mask_n[:, None] & mask_c[None, :], other=0.0)
    src_x = tl.load(SrcXY + batch * N * 2 + offs_n * 2, mask=mask_n, other=0.0)
    src_y = tl.load(SrcXY + batch * N * 2 + offs_n * 2 + 1, mask=mask_n, other=0.0)
    tgt_base = Tgt + batch * M * C
    tgt_xy_base = TgtXY + batch * M * 2

    m_i = tl.full([BLOCK_N], float("-inf"), acc_dtype)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_N], acc_dtype)  # running sum of exp2(logit - m_i)
    acc = tl.zeros([BLOCK_N], acc_dtype)  # running sum of exp2(logit - m_i) * distance
    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        tgt = tl.load(tgt_base + offs_m[:, None] * C + offs_c[None, :],
                      mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        tgt_x = tl.load(tgt_xy_base + offs_m * 2, mask=mask_m, other=0.0)
        tgt_y = tl.load(tgt_xy_base + offs_m * 2 + 1, mask=mask_m, other=0.0)
        # ieee: float32 must not silently run in TF32 (SPEC.md section 4)
        logits = _dot_nt(src_base, offs_n, mask_n, src, tgt_base, offs_m, mask_m, tgt, C, scale_log2e,
                         True, C_PAD, K_CHUNK, acc_dtype)
        logits = tl.where(mask_m[None, :], logits, float("-inf"))
        dx = src_x[:, None] - tgt_x[None, :]
        dy = src_y[:, None] - tgt_y[None, :]
        dist = _distance_power(dx * dx + dy * dy, pow_half, POW_MODE, IS_FP64).to(acc_dtype)
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.exp2(logits - m_new[:, None])  # masked columns: exp2(-inf) = 0, their distance is finite
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha + tl.sum(p * dist, 1)
        m_i = m_new

    tl.store(Rows + batch * N + offs_n, acc / l_i, mask=mask_n)
    tl.store(Lse + batch * N + offs_n, m_i + tl.log2(l_i), mask=mask_n)


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_bwd_src_kernel(
    GradRows, Src, Tgt, SrcXY, TgtXY, Lse, RowsBwd, RowScale, GradSrc,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    """d src_u = scale · upstream_u · sum_v p_uv (d_uv - L_u) tgt_v, one source tile per program.

    L_u here is sum_v p_uv d_uv with this kernel's own p, not the forward's: for peaked rows
    d_uv - L_u is a difference of nearly equal numbers, and the forward's differently rounded p would
    put ~1e-5 relative errors there (see the exchange query kernel). So one pass accumulates
    sum p d tgt, sum p tgt, sum p d and sum p, and d src = (first - L · second) / sum p. The row
    normalisation also removes the common error of the stored lse. L_u and 1 / sum p go to the tgt kernel.
    """
    pid_n = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.arange(0, C_PAD)
    mask_n = offs_n < N
    mask_c = offs_c < C
    src_offsets = batch * N * C + offs_n[:, None] * C + offs_c[None, :]
    src = tl.load(Src + src_offsets, mask=mask_n[:, None] & mask_c[None, :], other=0.0)
    src_base = Src + batch * N * C
    src_x = tl.load(SrcXY + batch * N * 2 + offs_n * 2, mask=mask_n, other=0.0)
    src_y = tl.load(SrcXY + batch * N * 2 + offs_n * 2 + 1, mask=mask_n, other=0.0)
    lse = tl.load(Lse + batch * N + offs_n, mask=mask_n, other=0.0)
    upstream = tl.load(GradRows + batch * N + offs_n, mask=mask_n, other=0.0).to(acc_dtype)
    tgt_base = Tgt + batch * M * C
    tgt_xy_base = TgtXY + batch * M * 2

    p_dist_tgt = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # sum_v p d tgt_v
    p_tgt = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # sum_v p tgt_v
    p_dist = tl.zeros([BLOCK_N], acc_dtype)  # sum_v p d
    row_sum = tl.zeros([BLOCK_N], acc_dtype)  # sum_v p
    for start_m in range(0, M, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        tgt = tl.load(tgt_base + offs_m[:, None] * C + offs_c[None, :],
                      mask=mask_m[:, None] & mask_c[None, :], other=0.0)
        tgt_x = tl.load(tgt_xy_base + offs_m * 2, mask=mask_m, other=0.0)
        tgt_y = tl.load(tgt_xy_base + offs_m * 2 + 1, mask=mask_m, other=0.0)
        logits = _dot_nt(src_base, offs_n, mask_n, src, tgt_base, offs_m, mask_m, tgt, C, scale_log2e,
                         True, C_PAD, K_CHUNK, acc_dtype)
        p = tl.where(mask_m[None, :], tl.exp2(logits - lse[:, None]), 0.0)
        dx = src_x[:, None] - tgt_x[None, :]
        dy = src_y[:, None] - tgt_y[None, :]
        pd = p * _distance_power(dx * dx + dy * dy, pow_half, POW_MODE, IS_FP64).to(acc_dtype)
        row_sum += tl.sum(p, 1)
        p_dist += tl.sum(pd, 1)
        p_dist_tgt += tl.dot(pd.to(tgt.dtype), tgt, input_precision="ieee", out_dtype=acc_dtype)
        p_tgt += tl.dot(p.to(tgt.dtype), tgt, input_precision="ieee", out_dtype=acc_dtype)

    row_scale = 1.0 / tl.where(mask_n, row_sum, 1.0)
    rows = p_dist * row_scale
    tl.store(RowScale + batch * N + offs_n, row_scale, mask=mask_n)
    tl.store(RowsBwd + batch * N + offs_n, rows, mask=mask_n)
    grad_src = (p_dist_tgt - rows[:, None] * p_tgt) * (row_scale * upstream * scale)[:, None]
    tl.store(GradSrc + src_offsets, grad_src.to(GradSrc.dtype.element_ty), mask=mask_n[:, None] & mask_c[None, :])


@triton.jit(do_not_specialize=["N", "M", "C"])
def _warp_bwd_tgt_kernel(
    GradRows, Src, Tgt, SrcXY, TgtXY, Lse, RowsBwd, RowScale, GradTgt,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO, POW_HALF_HI, POW_HALF_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    POW_MODE: tl.constexpr,
    IS_FP64: tl.constexpr,
):
    """d tgt_v = scale · sum_u p_uv (d_uv - L_u) upstream_u · src_u, one target tile per program."""
    pid_m = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    pow_half = _join_scalar(POW_HALF_HI, POW_HALF_LO, IS_FP64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.arange(0, C_PAD)
    mask_m = offs_m < M
    mask_c = offs_c < C
    tgt_offsets = batch * M * C + offs_m[:, None] * C + offs_c[None, :]
    tgt = tl.load(Tgt + tgt_offsets, mask=mask_m[:, None] & mask_c[None, :], other=0.0)
    tgt_x = tl.load(TgtXY + batch * M * 2 + offs_m * 2, mask=mask_m, other=0.0)
    tgt_y = tl.load(TgtXY + batch * M * 2 + offs_m * 2 + 1, mask=mask_m, other=0.0)
    src_base = Src + batch * N * C
    src_xy_base = SrcXY + batch * N * 2

    grad_tgt = tl.zeros([BLOCK_M, C_PAD], acc_dtype)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        src = tl.load(src_base + offs_n[:, None] * C + offs_c[None, :],
                      mask=mask_n[:, None] & mask_c[None, :], other=0.0)
        src_x = tl.load(src_xy_base + offs_n * 2, mask=mask_n, other=0.0)
        src_y = tl.load(src_xy_base + offs_n * 2 + 1, mask=mask_n, other=0.0)
        rows = tl.load(RowsBwd + batch * N + offs_n, mask=mask_n, other=0.0)
        lse = tl.load(Lse + batch * N + offs_n, mask=mask_n, other=0.0)
        # rows past N get weight 0 through a zero row scale
        weight = (tl.load(GradRows + batch * N + offs_n, mask=mask_n, other=0.0).to(acc_dtype)
                  * tl.load(RowScale + batch * N + offs_n, mask=mask_n, other=0.0))
        if tgt.dtype.primitive_bitwidth >= 32:
            # 32/64-bit: the very expressions of the src kernel (operands, orientation, tile shape), so p
            # and d are bitwise the ones L_u and the row scale were built from (see the exchange aux kernel)
            logits = _dot_nt(src_base, offs_n, mask_n, src, Tgt + batch * M * C, offs_m, mask_m, tgt, C,
                             scale_log2e, True, C_PAD, K_CHUNK, acc_dtype)
            p = tl.where(mask_m[None, :], tl.exp2(logits - lse[:, None]), 0.0)
            dx = src_x[:, None] - tgt_x[None, :]
            dy = src_y[:, None] - tgt_y[None, :]
            dist = _distance_power(dx * dx + dy * dy, pow_half, POW_MODE, IS_FP64).to(acc_dtype)
            dlogit_t = tl.trans(p * (dist - rows[:, None]) * weight[:, None])
        else:
            # 16-bit: transposed tiles (target rows x source columns): the reduction over u is a plain dot
            logits_t = tl.dot(tgt, tl.trans(src), out_dtype=acc_dtype) * scale_log2e
            p_t = tl.exp2(logits_t - lse[None, :])
            dx = src_x[None, :] - tgt_x[:, None]
            dy = src_y[None, :] - tgt_y[:, None]
            dist_t = _distance_power(dx * dx + dy * dy, pow_half, POW_MODE, IS_FP64).to(acc_dtype)
            dlogit_t = p_t * (dist_t - rows[None, :]) * weight[None, :]
        grad_tgt += tl.dot(dlogit_t.to(src.dtype), src, input_precision="ieee", out_dtype=acc_dtype)

    tl.store(GradTgt + tgt_offsets, (grad_tgt * scale).to(GradTgt.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])


# --------------------------------------------------------------------------------------------- launchers


def _coordinates(xy: torch.Tensor, batch: int, features: torch.Tensor) -> torch.Tensor:
    """Coordinates as the kernels read them: (B, rows, 2) contiguous, float64 for float64 features else float32."""
    xy = xy.to(accumulator_dtype(features.dtype))
    if xy.dim() == 2:  # (M, 2) shared by every pair: expanded, which copies O(B·M), never O(N·M)
        xy = xy.unsqueeze(0).expand(batch, -1, -1)
    return xy.contiguous()


def warp_loss_forward(src, tgt, src_xy, tgt_xy, pow: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused warp-loss forward.

    Args:
        src: ``(B, N, C)``; tgt: ``(B, M, C)`` (contiguous, same float dtype and device).
        src_xy: ``(B, N, 2)``; tgt_xy: ``(B, M, 2)`` (or ``(M, 2)``), pixel coordinates.
        pow: the distance power (> 0); scale: the softmax temperature.

    Returns:
        ``rows`` ``(B, N)`` = ``L_u`` and ``lse`` ``(B, N)``, the log2-sum-exp2 of scale·log2(e)·logits,
        both float32 (float64 for float64 features).
    """
    check_runnable(src)
    batch, n, c = src.shape
    m = tgt.shape[1]
    c_pad = channel_pad(c)
    config = launch_config("warp_fwd", c_pad, src.dtype)
    src_xy = _coordinates(src_xy, batch, src)
    tgt_xy = _coordinates(tgt_xy, batch, src)
    stat_dtype = accumulator_dtype(src.dtype)
    rows = torch.empty((batch, n), dtype=stat_dtype, device=src.device)
    lse = torch.empty((batch, n), dtype=stat_dtype, device=src.device)
    _warp_fwd_kernel[(triton.cdiv(n, config.block_n), batch)](
        src, tgt, src_xy, tgt_xy, rows, lse, n, m, c,
        *split_scalar(log2_scale(scale)), *split_scalar(0.5 * pow),
        C_PAD=c_pad, BLOCK_N=config.block_n, BLOCK_M=config.block_m, K_CHUNK=config.k_chunk,
        POW_MODE=pow_mode(pow),
        IS_FP64=src.dtype == torch.float64, num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return rows, lse


def warp_loss_backward(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow: float, scale: float):
    """Fused warp-loss backward: ``grad_rows`` ``(B, N)`` -> ``grad_src`` ``(B, N, C)``, ``grad_tgt`` ``(B, M, C)``.

    ``rows`` and ``lse`` ``(B, N)`` come from :func:`warp_loss_forward`; ``rows`` sets the statistics dtype
    but its values are not read: L_u is recomputed from this backward's own probabilities
    (see _warp_bwd_src_kernel).
    """
    check_runnable(src)
    batch, n, c = src.shape
    m = tgt.shape[1]
    c_pad = channel_pad(c)
    config = launch_config("warp_bwd", c_pad, src.dtype)
    src_xy = _coordinates(src_xy, batch, src)
    tgt_xy = _coordinates(tgt_xy, batch, src)
    grad_rows = grad_rows.contiguous().to(rows.dtype)
    grad_src = torch.empty_like(src)
    grad_tgt = torch.empty_like(tgt)
    # O(B·N), the only extra buffers: L_u and 1 / sum_v p recomputed by the src kernel for the tgt kernel.
    # (``rows`` from the forward is the same L_u, rounded differently; see _warp_bwd_src_kernel.)
    rows_backward = torch.empty_like(rows)
    row_scale = torch.empty_like(rows)
    scalars = (*split_scalar(scale), *split_scalar(log2_scale(scale)), *split_scalar(0.5 * pow))
    constexprs = dict(C_PAD=c_pad, BLOCK_N=config.block_n, BLOCK_M=config.block_m, K_CHUNK=config.k_chunk,
                      POW_MODE=pow_mode(pow),
                      IS_FP64=src.dtype == torch.float64)
    launch = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    _warp_bwd_src_kernel[(triton.cdiv(n, config.block_n), batch)](
        grad_rows, src, tgt, src_xy, tgt_xy, lse, rows_backward, row_scale, grad_src, n, m, c, *scalars,
        **constexprs, **launch)
    _warp_bwd_tgt_kernel[(triton.cdiv(m, config.block_m), batch)](
        grad_rows, src, tgt, src_xy, tgt_xy, lse, rows_backward, row_scale, grad_tgt, n, m, c, *scalars,
        **constexprs, **launch)
    return grad_src, grad_tgt


def warp_loss_specializations() -> list:
    """Every (kernel, constexprs, warps, stages) the launchers above can pick, for AOT compilation."""
    specs = []
    for dtype in FEATURE_DTYPES:
        feat = "*" + triton_type(dtype)
        stat = "*" + triton_type(accumulator_dtype(dtype))
        ints = dict(N="i32", M="i32", C="i32")
        for c_pad in CHANNEL_PADS:
            for mode in POW_MODES:
                tag = f"{triton_type(dtype)}_c{c_pad}_{POW_MODE_NAMES[mode]}"
                config = launch_config("warp_fwd", c_pad, dtype)
                constexprs = dict(C_PAD=c_pad, BLOCK_N=config.block_n, BLOCK_M=config.block_m,
                                  K_CHUNK=config.k_chunk, POW_MODE=mode,
                                  IS_FP64=dtype == torch.float64)
                specs.append(make_specialization(
                    f"warp_fwd_{tag}", _warp_fwd_kernel,
                    dict(Src=feat, Tgt=feat, SrcXY=stat, TgtXY=stat, Rows=stat, Lse=stat, **ints,
                         SCALE_LOG2E_HI="fp32", SCALE_LOG2E_LO="fp32", POW_HALF_HI="fp32", POW_HALF_LO="fp32"),
                    constexprs, config))
                config = launch_config("warp_bwd", c_pad, dtype)
                constexprs = dict(constexprs, BLOCK_N=config.block_n, BLOCK_M=config.block_m,
                                  K_CHUNK=config.k_chunk)
                arg_types = dict(GradRows=stat, Src=feat, Tgt=feat, SrcXY=stat, TgtXY=stat, Lse=stat,
                                 RowsBwd=stat, RowScale=stat,
                                 GradSrc=feat, GradTgt=feat, **ints, SCALE_HI="fp32", SCALE_LO="fp32",
                                 SCALE_LOG2E_HI="fp32", SCALE_LOG2E_LO="fp32", POW_HALF_HI="fp32",
                                 POW_HALF_LO="fp32")
                specs.append(make_specialization(
                    f"warp_bwd_src_{tag}", _warp_bwd_src_kernel, arg_types, constexprs, config))
                specs.append(make_specialization(
                    f"warp_bwd_tgt_{tag}", _warp_bwd_tgt_kernel, arg_types, constexprs, config))
    return specs


# ----------------------------------------------------------------------------------- custom-op registration


@torch.library.custom_op("dve_kernels::warp_loss_fwd_triton", mutates_args=())
def warp_loss_fwd_triton(src: torch.Tensor, tgt: torch.Tensor, src_xy: torch.Tensor, tgt_xy: torch.Tensor,
                         pow: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return warp_loss_forward(src, tgt, src_xy, tgt_xy, pow, scale)


@warp_loss_fwd_triton.register_fake
def _warp_loss_fwd_fake(src, tgt, src_xy, tgt_xy, pow, scale):
    batch, n, _ = src.shape
    stat_dtype = accumulator_dtype(src.dtype)
    return src.new_empty((batch, n), dtype=stat_dtype), src.new_empty((batch, n), dtype=stat_dtype)


@torch.library.custom_op("dve_kernels::warp_loss_bwd_triton", mutates_args=())
def warp_loss_bwd_triton(grad_rows: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, src_xy: torch.Tensor,
                         tgt_xy: torch.Tensor, rows: torch.Tensor, lse: torch.Tensor, pow: float,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return warp_loss_backward(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale)


@warp_loss_bwd_triton.register_fake
def _warp_loss_bwd_fake(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale):
    return torch.empty_like(src), torch.empty_like(tgt)


def _warp_loss_setup_context(ctx, inputs, output):
    src, tgt, src_xy, tgt_xy, pow, scale = inputs
    rows, lse = output
    ctx.save_for_backward(src, tgt, src_xy, tgt_xy, rows, lse)
    ctx.pow = pow
    ctx.scale = scale


def _warp_loss_autograd(ctx, grad_rows, grad_lse):
    # lse is a saved statistic, not a differentiable output; coordinates get no gradient (SPEC.md section 1)
    src, tgt, src_xy, tgt_xy, rows, lse = ctx.saved_tensors
    grad_src, grad_tgt = warp_loss_bwd_triton(grad_rows.contiguous(), src, tgt, src_xy, tgt_xy, rows, lse,
                                              ctx.pow, ctx.scale)
    return grad_src, grad_tgt, None, None, None, None


warp_loss_fwd_triton.register_autograd(_warp_loss_autograd, setup_context=_warp_loss_setup_context)


def warp_loss_rows(src, tgt, src_xy, tgt_xy, pow: float, scale: float) -> torch.Tensor:
    """Differentiable fused warp-loss rows: ``L_u`` ``(B, N)`` (float32; float64 for float64 features).

    src ``(B, N, C)``, tgt ``(B, M, C)``, src_xy ``(B, N, 2)``, tgt_xy ``(B, M, 2)``; gradients for src and tgt.
    """
    return warp_loss_fwd_triton(src, tgt, src_xy, tgt_xy, float(pow), float(scale))[0]
