"""Exchange reconstruction (paper eq. 5) as fused Triton kernels: softmax attention with keys = values.

``out_u = sum_w softmax_w(scale · <query_u, aux_w>) · aux_w`` for query ``(B, N, C)`` and aux ``(B, M, C)``.

Forward: FlashAttention-style online softmax over aux tiles; saves the per-row log-sum-exp (base 2).
Backward (FlashAttention-2 structure, deterministic, no atomics, nothing of size N x M):
one kernel per query tile computes ``D_u = sum_w P_uw <dO_u, aux_w>`` and d query iterating over aux tiles;
one kernel per aux tile computes d aux (value role ``P^T dO`` plus key role ``scale · dS^T Q``)
iterating over query tiles, with probabilities recomputed from the saved log-sum-exp.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import precision
from ._launch import (
    aligned_stride,
    kernel_constexprs,
    launch_plan,
    lse_dtype,
    lse_from_natural,
    lse_to_natural,
    log2_scale,
    make_specialization,
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
    _load_vector,
    _program_rows,
    _softmax_tile,
    _store_lse,
    _store_rows,
)


# ----------------------------------------------------------------------------------------------- kernels
#
# As in warp_loss.py: full tiles first with no masks, then the partial tile (MASK constexpr of the *_step
# helpers); EVEN_C (C == C_PAD) gives feature rows a compile-time stride; the per-row statistics the aux
# kernel reads come in one planar buffer with 16-element aligned planes.


@triton.jit
def _exchange_fwd_step(query, query_base, offs_n, mask_n, aux_base, start_m, M, C, m_i, l_i, acc, scale_log2e,
                       C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr, IS_FP64: tl.constexpr,
                       EVEN_C: tl.constexpr, MASK_M: tl.constexpr, DOT: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    aux = _load_rows(aux_base, offs_m, mask_m, C, C_PAD, EVEN_C, MASK_M)
    if query.dtype.primitive_bitwidth < 32:
        logits = tl.dot(query, tl.trans(aux), out_dtype=acc_dtype)  # unscaled, see _softmax_tile
    else:
        # DOT: float32 never silently runs in TF32 (dve_kernels/precision.py)
        logits = _dot_nt(query_base, offs_n, mask_n, query, aux_base, offs_m, mask_m, aux, C, scale_log2e,
                         True, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
    m_new, p = _softmax_tile(logits, m_i, mask_m, scale_log2e, query.dtype.primitive_bitwidth >= 32, MASK_M,
                             P_DTYPE=acc_dtype)
    alpha = tl.exp2((m_i - m_new).to(acc_dtype))  # rescales what was accumulated under the old max
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(aux.dtype), aux, input_precision=DOT, out_dtype=acc_dtype)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["N", "M", "C"])
def _exchange_fwd_kernel(
    Query, Aux, Out, Lse,
    N, M, C,
    SCALE_LOG2E_HI, SCALE_LOG2E_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    batch, offs_n, mask_n, query_base, query = _program_rows(Query, N, C, BLOCK_N, C_PAD, EVEN_C)
    if query.dtype.primitive_bitwidth < 32:  # negating 16-bit values is exact: logits * s = (-query)·aux * |s|
        query = tl.where(scale_log2e < 0, -query, query)
        scale_log2e = tl.abs(scale_log2e)
    aux_base = _batch_rows(Aux, batch, M, C, C_PAD, EVEN_C)

    m_i = tl.full([BLOCK_N], float("-inf"), acc_dtype)  # running max of the base-2 logits
    l_i = tl.zeros([BLOCK_N], acc_dtype)  # running sum of exp2(logit - m_i)
    acc = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # running sum of exp2(logit - m_i) * aux_w
    full_m = _full_tiles_end(M, BLOCK_M, LOW_PRECISION=query.dtype.primitive_bitwidth < 32)
    for masked in tl.static_range(2):  # the full tiles with no masks, then the partial tile (if any) with them
        for start_m in range(full_m if masked else 0, M if masked else full_m, BLOCK_M):
            m_i, l_i, acc = _exchange_fwd_step(query, query_base, offs_n, mask_n, aux_base, start_m, M, C, m_i, l_i,
                                               acc, scale_log2e, C_PAD, BLOCK_M, K_CHUNK, IS_FP64, EVEN_C, masked == 1,
                                               DOT)

    out = acc / l_i[:, None]
    _store_rows(_batch_rows(Out, batch, N, C, C_PAD, EVEN_C), offs_n, mask_n, out, C, C_PAD, EVEN_C)
    _store_lse(Lse, batch, N, offs_n, mask_n, m_i, l_i, query.dtype.primitive_bitwidth < 32)


@triton.jit
def _exchange_bwd_query_step(query, grad_out, query_base, grad_out_base, offs_n, mask_n, lse, aux_base, start_m, M,
                             C, weighted_dp_aux, p_aux, excess, row_sum, delta_est, scale_log2e,
                             C_PAD: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
                             IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, MASK_M: tl.constexpr, DOT: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_m = start_m + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    aux = _load_rows(aux_base, offs_m, mask_m, C, C_PAD, EVEN_C, MASK_M)
    logits = _dot_nt(query_base, offs_n, mask_n, query, aux_base, offs_m, mask_m, aux, C, scale_log2e,
                     True, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
    p = _exp2_minus_lse(logits, lse, acc_dtype)
    if MASK_M:
        p = tl.where(mask_m[None, :], p, 0.0)
    dp = _dot_nt(grad_out_base, offs_n, mask_n, grad_out, aux_base, offs_m, mask_m, aux, C, scale_log2e,
                 False, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
    p_dp = p * (dp - delta_est[:, None]).to(acc_dtype)  # small where p is large, and exact there (Sterbenz)
    row_sum += tl.sum(p, 1)
    excess += tl.sum(p_dp, 1)
    weighted_dp_aux += tl.dot(p_dp.to(aux.dtype), aux, input_precision=DOT, out_dtype=acc_dtype)
    p_aux += tl.dot(p.to(aux.dtype), aux, input_precision=DOT, out_dtype=acc_dtype)
    return weighted_dp_aux, p_aux, excess, row_sum


@triton.jit(do_not_specialize=["N", "M", "C"])
def _exchange_bwd_query_kernel(
    GradOut, Query, Aux, Out, Lse, Stats, GradQuery,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    """d query_u = scale · sum_w dS_uw aux_w, dS_uw = p_uw (dP_uw - D_u), dP_uw = <dO_u, aux_w>.

    p = P / S_u: this kernel's own probabilities P = exp2(logit - lse) over their row sum (which also removes
    the common rounding of the stored lse), and D_u = sum_w p_uw dP_uw. FlashAttention takes D_u as
    D~_u = <dO_u, out_u> from the forward output, which with peaked rows (x20 normalised vectors, logits ~400)
    is ~1e-5 |dP| off, and that error lands in dP - D, a difference of nearly equal numbers. Subtracting two
    large accumulated sums (sum P dP aux - D sum P aux) cancels in the same way. So one pass accumulates, with
    r_uw = dP_uw - D~_u (exact where P matters: nearly equal numbers), A = sum_w P r aux_w, s = sum_w P aux_w,
    e = sum_w P r and S = sum_w P; then D_u - D~_u = e / S and d query = (A - (e / S) s) / S · scale, where
    both terms are small where the row is peaked. For the aux kernel it writes the planar per-row statistics
    Stats (B, 3, stride): D~_u, e / S and 1 / S, from which it forms p ((dP - D~) - e / S) per element.
    """
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    batch, offs_n, mask_n, query_base, query = _program_rows(Query, N, C, BLOCK_N, C_PAD, EVEN_C)
    grad_out_base = _batch_rows(GradOut, batch, N, C, C_PAD, EVEN_C)
    grad_out = _load_rows(grad_out_base, offs_n, mask_n, C, C_PAD, EVEN_C, True)
    lse = tl.load(Lse + batch * N + offs_n, mask=mask_n, other=0.0)
    aux_base = _batch_rows(Aux, batch, M, C, C_PAD, EVEN_C)
    out = _load_rows(_batch_rows(Out, batch, N, C, C_PAD, EVEN_C), offs_n, mask_n, C, C_PAD, EVEN_C, True)
    delta_est = tl.sum(grad_out.to(acc_dtype) * out.to(acc_dtype), 1)  # D~_u = <dO_u, out_u>

    weighted_dp_aux = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # A = sum_w P (dP - D~) aux_w
    p_aux = tl.zeros([BLOCK_N, C_PAD], acc_dtype)  # s = sum_w P aux_w (the output, as this kernel's P gives it)
    excess = tl.zeros([BLOCK_N], acc_dtype)  # e = sum_w P (dP - D~)
    row_sum = tl.zeros([BLOCK_N], acc_dtype)  # sum_w P
    full_m = _full_tiles_end(M, BLOCK_M, LOW_PRECISION=query.dtype.primitive_bitwidth < 32)
    for masked in tl.static_range(2):  # the full tiles with no masks, then the partial tile (if any) with them
        for start_m in range(full_m if masked else 0, M if masked else full_m, BLOCK_M):
            weighted_dp_aux, p_aux, excess, row_sum = _exchange_bwd_query_step(
                query, grad_out, query_base, grad_out_base, offs_n, mask_n, lse, aux_base, start_m, M, C,
                weighted_dp_aux, p_aux, excess, row_sum, delta_est, scale_log2e, C_PAD, BLOCK_M, K_CHUNK, IS_FP64,
                EVEN_C, masked == 1, DOT)

    row_scale = 1.0 / tl.where(mask_n, row_sum, 1.0)
    excess = excess * row_scale  # D_u - D~_u
    row_stride = _coordinate_stride(N)
    stats_base = Stats + batch * 3 * row_stride + offs_n
    tl.store(stats_base, delta_est, mask=mask_n)
    tl.store(stats_base + row_stride, excess, mask=mask_n)
    tl.store(stats_base + 2 * row_stride, row_scale, mask=mask_n)
    grad_query = (weighted_dp_aux - excess[:, None] * p_aux) * (row_scale * scale)[:, None]
    _store_rows(_batch_rows(GradQuery, batch, N, C, C_PAD, EVEN_C), offs_n, mask_n, grad_query, C, C_PAD, EVEN_C)


@triton.jit
def _exchange_bwd_aux_step(aux, aux_base, offs_m, mask_m, query_base, grad_out_base, lse_base, stats_base, ROW_STRIDE,
                           start_n,
                           N, C, grad_aux, scale, scale_log2e,
                           C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, K_CHUNK: tl.constexpr, IS_FP64: tl.constexpr,
                           EVEN_C: tl.constexpr, MASK_N: tl.constexpr, DOT: tl.constexpr):
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    offs_n = start_n + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    query = _load_rows(query_base, offs_n, mask_n, C, C_PAD, EVEN_C, MASK_N)
    grad_out = _load_rows(grad_out_base, offs_n, mask_n, C, C_PAD, EVEN_C, MASK_N)
    lse = _load_vector(lse_base, offs_n, mask_n, MASK_N)
    delta_est = _load_vector(stats_base, offs_n, mask_n, MASK_N)
    excess = _load_vector(stats_base + ROW_STRIDE, offs_n, mask_n, MASK_N)
    row_scale = _load_vector(stats_base + 2 * ROW_STRIDE, offs_n, mask_n, MASK_N)  # 0 masks rows past N
    if aux.dtype.primitive_bitwidth >= 32:
        # 32/64-bit: the very expression of the query kernel (same operands, orientation and tile
        # shape), so P and dP are bitwise the ones D_u and the row scale were built from; the float32
        # logits (~1e-5 absolute rounding at |logit| ~ 500) would otherwise disagree by that much
        # in every P of a peaked row. The transposes cost a layout conversion per tile.
        logits = _dot_nt(query_base, offs_n, mask_n, query, aux_base, offs_m, mask_m, aux, C, scale_log2e,
                         True, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
        p = tl.where(mask_m[None, :], _exp2_minus_lse(logits, lse, acc_dtype), 0.0) * row_scale[:, None]
        dp = _dot_nt(grad_out_base, offs_n, mask_n, grad_out, aux_base, offs_m, mask_m, aux, C, scale_log2e,
                     False, C_PAD, K_CHUNK, acc_dtype, EVEN_C, DOT)
        p_t = tl.trans(p)
        ds_t = tl.trans(p * ((dp - delta_est[:, None]).to(acc_dtype) - excess[:, None])) * scale
    else:
        # 16-bit: transposed tiles (aux rows x query columns) so the reductions over u are plain dots
        # with no layout conversion, as in FlashAttention-2; rounding is far below 16-bit error here.
        p_t = tl.exp2(tl.dot(aux, tl.trans(query), out_dtype=acc_dtype) * scale_log2e - lse[None, :])
        p_t = p_t * row_scale[None, :]
        dp_t = tl.dot(aux, tl.trans(grad_out), out_dtype=acc_dtype)
        ds_t = p_t * ((dp_t - delta_est[None, :]) - excess[None, :]) * scale
    grad_aux += tl.dot(p_t.to(aux.dtype), grad_out, input_precision=DOT, out_dtype=acc_dtype)
    grad_aux += tl.dot(ds_t.to(aux.dtype), query, input_precision=DOT, out_dtype=acc_dtype)
    return grad_aux


@triton.jit(do_not_specialize=["N", "M", "C"])
def _exchange_bwd_aux_kernel(
    GradOut, Query, Aux, Lse, Stats, GradAux,
    N, M, C,
    SCALE_HI, SCALE_LO, SCALE_LOG2E_HI, SCALE_LOG2E_LO,
    C_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, K_CHUNK: tl.constexpr,
    IS_FP64: tl.constexpr, EVEN_C: tl.constexpr, DOT: tl.constexpr,
):
    """d aux_w = sum_u P_uw dO_u (value role) + scale · sum_u dS_uw query_u (key role), in one accumulator."""
    acc_dtype: tl.constexpr = tl.float64 if IS_FP64 else tl.float32
    scale = _join_scalar(SCALE_HI, SCALE_LO, IS_FP64)
    scale_log2e = _join_scalar(SCALE_LOG2E_HI, SCALE_LOG2E_LO, IS_FP64)
    batch, offs_m, mask_m, aux_base, aux = _program_rows(Aux, M, C, BLOCK_M, C_PAD, EVEN_C)
    query_base = _batch_rows(Query, batch, N, C, C_PAD, EVEN_C)
    grad_out_base = _batch_rows(GradOut, batch, N, C, C_PAD, EVEN_C)
    row_stride = _coordinate_stride(N)
    stats_base = Stats + batch * 3 * row_stride
    lse_base = Lse + batch * N

    grad_aux = tl.zeros([BLOCK_M, C_PAD], acc_dtype)
    full_n = _full_tiles_end(N, BLOCK_N, LOW_PRECISION=aux.dtype.primitive_bitwidth < 32)
    for masked in tl.static_range(2):  # the full tiles with no masks, then the partial tile (if any) with them
        for start_n in range(full_n if masked else 0, N if masked else full_n, BLOCK_N):
            grad_aux = _exchange_bwd_aux_step(aux, aux_base, offs_m, mask_m, query_base, grad_out_base, lse_base,
                                              stats_base, row_stride, start_n, N, C, grad_aux, scale, scale_log2e, C_PAD,
                                              BLOCK_N, K_CHUNK, IS_FP64, EVEN_C, masked == 1, DOT)

    _store_rows(_batch_rows(GradAux, batch, M, C, C_PAD, EVEN_C), offs_m, mask_m, grad_aux, C, C_PAD, EVEN_C)


# --------------------------------------------------------------------------------------------- launchers


def exchange_forward(query: torch.Tensor, aux: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused exchange forward.

    Args:
        query: ``(B, N, C)``, float32/float16/bfloat16/float64 (any strides: the kernels read contiguous copies).
        aux: ``(B, M, C)``, same dtype and device.
        scale: the softmax temperature ``s``.

    Returns:
        ``out`` ``(B, N, C)`` contiguous in the input dtype and ``lse`` ``(B, N)`` float64, the natural
        log-sum-exp of scale·<query_u, aux_w> over w (the one convention of every backend, see _library.py).
    """
    plan = launch_plan("exchange_fwd", query, aux)
    query, aux, batch, n = plan.rows, plan.cols, plan.batch, plan.n
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty((batch, n), dtype=lse_dtype(query.dtype), device=query.device)
    _exchange_fwd_kernel[(triton.cdiv(n, plan.config.block_n), batch)](
        query, aux, out, lse, n, plan.m, plan.c, *split_scalar(log2_scale(scale)), **plan.constexprs, **plan.options)
    return out, lse_to_natural(lse)


def exchange_backward(grad_out, query, aux, out, lse, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused exchange backward.

    Args:
        grad_out, query, out: ``(B, N, C)``; aux: ``(B, M, C)``; lse: ``(B, N)`` from :func:`exchange_forward`.
        ``out`` gives FlashAttention's estimate <dO_u, out_u> of D_u, which the query kernel corrects
        (see _exchange_bwd_query_kernel). Any strides: the kernels read contiguous copies.

    Returns:
        ``grad_query`` ``(B, N, C)`` and ``grad_aux`` ``(B, M, C)`` in the input dtype.
    """
    plan = launch_plan("exchange_bwd", query, aux)
    query, aux, batch, n, m, c = plan.rows, plan.cols, plan.batch, plan.n, plan.m, plan.c
    out = out.contiguous()
    lse = lse_from_natural(lse, query.dtype)
    grad_out = grad_out.contiguous().to(query.dtype)
    grad_query = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    grad_aux = torch.empty(aux.shape, dtype=aux.dtype, device=aux.device)
    # O(B·N), the only extra buffer: D~_u, D_u - D~_u and the row normalisation per query row, written by the
    # query kernel for the aux kernel, in planes aligned to 16 elements (see _coordinate_stride)
    stats = torch.empty((batch, 3, aligned_stride(n)), dtype=precision.accumulate_dtype(query.dtype), device=query.device)
    scalars = (*split_scalar(scale), *split_scalar(log2_scale(scale)))
    _exchange_bwd_query_kernel[(triton.cdiv(n, plan.config.block_n), batch)](
        grad_out, query, aux, out, lse, stats, grad_query, n, m, c, *scalars, **plan.constexprs, **plan.options)
    _exchange_bwd_aux_kernel[(triton.cdiv(m, plan.config.block_m), batch)](
        grad_out, query, aux, lse, stats, grad_aux, n, m, c, *scalars, **plan.constexprs, **plan.options)
    return grad_query, grad_aux


def exchange_specializations() -> list:
    """Every (kernel, constexprs, warps, stages) the launchers above can pick, for AOT compilation."""
    specs = []
    for case in specialization_cases():
        feat, name = case.feat, f"{case.tag}{case.ragged}"
        constexprs, config = kernel_constexprs("exchange_fwd", case.c_pad, case.dtype, case.even_c, case.dot)
        specs.append(make_specialization(
            f"exchange_fwd_{name}", _exchange_fwd_kernel,
            dict(Query=feat, Aux=feat, Out=feat, Lse=case.lse, **case.ints, **case.scalars("SCALE_LOG2E")),
            constexprs, config))
        constexprs, config = kernel_constexprs("exchange_bwd", case.c_pad, case.dtype, case.even_c, case.dot)
        common = dict(GradOut=feat, Query=feat, Aux=feat, Lse=case.lse, Stats=case.stat, **case.ints,
                      **case.scalars("SCALE", "SCALE_LOG2E"))
        specs.append(make_specialization(f"exchange_bwd_query_{name}", _exchange_bwd_query_kernel,
                                         dict(common, Out=feat, GradQuery=feat), constexprs, config))
        specs.append(make_specialization(f"exchange_bwd_aux_{name}", _exchange_bwd_aux_kernel,
                                         dict(common, GradAux=feat), constexprs, config))
    return specs
