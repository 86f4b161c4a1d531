"""Device tile helpers shared by the Triton kernels: scalar joining, row-tile loads and stores, the online
softmax step, the logit dots, and the bound of the unmasked full tiles."""

from __future__ import annotations

import triton
import triton.language as tl

@triton.jit
def _join_scalar(HI, LO, IS_FP64: tl.constexpr):
    """Re-join a scalar passed as a float32 pair (see split_scalar); float32 launches use HI only."""
    # adding to a typed zero (rather than .to()) also works on the plain Python floats of the interpreter
    if IS_FP64:
        return (tl.zeros([], tl.float64) + HI) + LO
    else:
        return tl.zeros([], tl.float32) + HI


@triton.jit
def _batch_rows(Rows, batch, n_rows, C, C_PAD: tl.constexpr, EVEN_C: tl.constexpr):
    """Where ``batch``'s rows start in a row-major ``(B, n_rows, C)`` matrix (``batch`` int64: batch·n_rows·C can
    pass 2^31). EVEN_C: the row stride is the compile-time C_PAD."""
    return Rows + batch * n_rows * (C_PAD if EVEN_C else C)


@triton.jit
def _program_rows(Rows, n_rows, C, BLOCK: tl.constexpr, C_PAD: tl.constexpr, EVEN_C: tl.constexpr):
    """The prologue of every kernel: program (i, b) owns rows ``i·BLOCK ..`` of batch b of ``Rows`` (B, n_rows, C).

    Returns ``(batch, offs, mask, base, tile)``: the batch index (int64), the rows' offsets and in-range mask,
    the batch's base pointer (see _batch_rows) and the ``BLOCK x C_PAD`` tile of those rows (see _load_rows).
    """
    batch = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_rows
    base = _batch_rows(Rows, batch, n_rows, C, C_PAD, EVEN_C)
    return batch, offs, mask, base, _load_rows(base, offs, mask, C, C_PAD, EVEN_C, True)


@triton.jit
def _load_planar(Planar, batch, n_rows, offs, mask, PLANES: tl.constexpr):
    """Rows ``offs`` of the first two planes of a planar ``(B, PLANES, stride)`` buffer (coordinates: x and y),
    stride = _coordinate_stride(n_rows); returns ``(first, second, the batch's base, stride)``."""
    stride = _coordinate_stride(n_rows)
    base = Planar + batch * PLANES * stride
    first = tl.load(base + offs, mask=mask, other=0.0)
    second = tl.load(base + stride + offs, mask=mask, other=0.0)
    return first, second, base, stride


@triton.jit
def _load_rows(base, rows, row_mask, C, C_PAD: tl.constexpr, EVEN_C: tl.constexpr, MASK_ROWS: tl.constexpr):
    """The ``rows x C_PAD`` tile of a row-major ``(*, C)`` matrix at ``base``; channels past C read 0.

    EVEN_C (C == C_PAD): the row stride is a compile-time constant and there is no channel mask, so each
    thread's part of a row is one 16-byte vector load (with a runtime C the compiler cannot prove alignment
    and loads element by element). Without MASK_ROWS every row is in range (full tiles): no predicates.
    Rows masked off read 0.
    """
    offs_c = tl.arange(0, C_PAD)
    if EVEN_C:
        ptrs = base + rows[:, None] * C_PAD + offs_c[None, :]
        if MASK_ROWS:
            tile = tl.load(ptrs, mask=row_mask[:, None], other=0.0)
        else:
            tile = tl.load(ptrs)
    else:
        tile = tl.load(base + rows[:, None] * C + offs_c[None, :], mask=row_mask[:, None] & (offs_c < C)[None, :],
                       other=0.0)
    return tile



@triton.jit
def _store_rows(base, rows, row_mask, tile, C, C_PAD: tl.constexpr, EVEN_C: tl.constexpr):
    """Store the ``rows x C_PAD`` tile into a row-major ``(*, C)`` matrix at ``base`` (the twin of _load_rows),
    converted to the matrix's dtype; rows masked off and channels past C are not written."""
    offs_c = tl.arange(0, C_PAD)
    stride = C_PAD if EVEN_C else C
    tl.store(base + rows[:, None] * stride + offs_c[None, :], tile.to(base.dtype.element_ty),
             mask=row_mask[:, None] & (offs_c < C)[None, :])


@triton.jit
def _full_tiles_end(rows, BLOCK: tl.constexpr, LOW_PRECISION: tl.constexpr):
    """Where the unmasked full tiles of a loop over ``rows`` end (the partial tile runs after them, masked).

    16-bit data: every full tile runs without masks. 32/64-bit data: 0, every tile masked (unmasked full
    tiles cost registers and spilled on sm_80).
    """
    if LOW_PRECISION:
        end = rows - rows % BLOCK
    else:
        end = 0
    return end



@triton.jit
def _coordinate_stride(rows):
    """The row stride of the planar coordinate buffers (B, 2, stride): rows rounded up to 16, so that
    every x and y plane starts 64-byte aligned and per-column coordinate loads can be vectors."""
    return tl.cdiv(rows, 16) * 16


@triton.jit
def _load_vector(base, offs, mask, MASKED: tl.constexpr):
    """``base[offs]`` (0 where masked off, when MASKED)."""
    if MASKED:
        values = tl.load(base + offs, mask=mask, other=0.0)
    else:
        values = tl.load(base + offs)
    return values


@triton.jit
def _softmax_tile(logits, m_i, mask_m, scale_log2e, SCALED: tl.constexpr, MASK_M: tl.constexpr,
                  P_DTYPE: tl.constexpr = tl.float32):
    """One tile of an online softmax: the new running row max ``m_new`` and ``p = exp2(logit - m_new)``.

    SCALED (32/64-bit data): ``logits`` already carry scale·log2(e) and are in the data's dtype (see _dot_nt), like
    the running max; logit - m_new is exact where p matters (Sterbenz). Otherwise (16-bit data)
    they are the raw tensor-core dot products and ``scale_log2e >= 0`` (the kernels fold the scale's sign into
    their row tile, which is exact): the scaled row max is then the raw one times the scale, and exp2's
    argument is one FFMA per pair. MASK_M: columns masked off get p = 0 and do not enter the max.
    """
    if SCALED:
        if MASK_M:
            logits = tl.where(mask_m[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        p = tl.exp2((logits - m_new[:, None]).to(P_DTYPE))  # masked columns: exp2(-inf) = 0
    elif MASK_M:
        m_new = tl.maximum(m_i, tl.max(tl.where(mask_m[None, :], logits, float("-inf")), 1) * scale_log2e)
        p = tl.where(mask_m[None, :], tl.exp2(logits * scale_log2e - m_new[:, None]), 0.0)
    else:
        m_new = tl.maximum(m_i, tl.max(logits, 1) * scale_log2e)
        p = tl.exp2(logits * scale_log2e - m_new[:, None])
    return m_new, p


@triton.jit
def _dot_nt_tensor_core(a_tile, b_tile, scale_log2e, SCALE_A: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """16-bit data: one tensor-core dot of the register tiles the caller loaded, scaled afterwards in float32."""
    out = tl.dot(a_tile, tl.trans(b_tile), out_dtype=OUT_DTYPE)
    if SCALE_A:
        out = out * scale_log2e
    return out


@triton.jit
def _dot_nt_sliced(A, a_rows, a_mask, B, b_rows, b_mask, C, scale_log2e, SCALE_A: tl.constexpr, C_PAD: tl.constexpr,
                   K_CHUNK: tl.constexpr, EVEN_C: tl.constexpr, OUT_DTYPE: tl.constexpr, DOT: tl.constexpr):
    """32/64-bit data: dot(A rows, B rows^T) over K_CHUNK-wide channel slices read from memory, in the data's own
    precision (docs/contract.md section 4, dve_kernels/precision.py): OUT_DTYPE is the data's dtype, and DOT the
    float32 dot algorithm ("ieee": FMA dots; "tf32": single-pass TF32 on tensor cores, only when the user asked for
    it with torch.set_float32_matmul_precision; float64 data: "ieee").

    An FMA dot keeps the whole reduction dimension of its operand fragments per thread; at C_PAD = 64..256 that
    spills. So the channels are walked in K_CHUNK-wide slices re-read from memory (L1/L2 hits: the caller has the
    same rows in flight). The scale goes into the A slice before the dot: each small product term is rounded
    instead of the large logit (|logit| up to ~1.4e4 in base 2; logits of 1e4 must stay correct).
    """
    out = tl.zeros([a_rows.shape[0], b_rows.shape[0]], OUT_DTYPE)
    stride = C_PAD if EVEN_C else C
    # a runtime trip count even when EVEN_C: a compile-time one let the compiler unroll the slices and
    # spill on sm_80; C, not C_PAD: no slice of padding only
    for k_start in range(0, C, K_CHUNK):
        offs_k = k_start + tl.arange(0, K_CHUNK)
        mask_k = offs_k < stride
        a = tl.load(A + a_rows[:, None] * stride + offs_k[None, :], mask=a_mask[:, None] & mask_k[None, :],
                    other=0.0).to(OUT_DTYPE)
        if SCALE_A:
            a = a * scale_log2e.to(OUT_DTYPE)
        b = tl.load(B + b_rows[:, None] * stride + offs_k[None, :], mask=b_mask[:, None] & mask_k[None, :],
                    other=0.0).to(OUT_DTYPE)
        out += tl.dot(a, tl.trans(b), input_precision=DOT, out_dtype=OUT_DTYPE)
    return out


@triton.jit
def _store_lse(Lse, batch, n_rows, offs, mask, m_i, l_i, LOW_PRECISION: tl.constexpr):
    """The forwards' epilogue: each row's log2-sum-exp2 ``m_i + log2(l_i)`` into ``Lse`` (B, n_rows).

    32/64-bit data: formed in float64 per row (see _exp2_minus_lse: the backward splits it into hi + lo).
    16-bit data: in float32; the backward divides out its rounding (lse_to_natural).
    """
    if LOW_PRECISION:
        lse = m_i + tl.log2(l_i)
    else:
        lse = m_i.to(tl.float64) + tl.log2(l_i.to(tl.float64))
    tl.store(Lse + batch * n_rows + offs, lse, mask=mask)


@triton.jit
def _exp2_minus_lse(logits, lse, ACC_DTYPE: tl.constexpr):
    """``exp2(logit - lse)`` per element, in ACC_DTYPE, for the float64 per-row ``lse`` (base 2) of the forward.

    A float32 lse of logits ~600 (base 2) is 6e-5 coarse, which would scale every probability of its row; and a
    float64 subtraction per pair costs 1/64 of the float32 rate on most GPUs. So each row's lse is split once
    into ``hi + lo`` in ACC_DTYPE and the pair computes ``(logit - hi) - lo``: logit - hi is exact where the
    probability matters (Sterbenz), as on the CPU (csrc/common.h, split_lse).
    """
    hi = lse.to(ACC_DTYPE)
    lo = (lse - hi.to(lse.dtype)).to(ACC_DTYPE)
    return tl.exp2((logits - hi[:, None]) - lo[:, None])


@triton.jit
def _dot_nt(A, a_rows, a_mask, a_tile, B, b_rows, b_mask, b_tile, C, scale_log2e,
            SCALE_A: tl.constexpr, C_PAD: tl.constexpr, K_CHUNK: tl.constexpr, OUT_DTYPE: tl.constexpr,
            EVEN_C: tl.constexpr = False, DOT: tl.constexpr = "ieee"):
    """dot(A_tile, B_tile^T) over the C channels: (rows of A) x (rows of B), times scale_log2e if SCALE_A.

    16-bit data: _dot_nt_tensor_core on the register tiles a_tile / b_tile. 32/64-bit data: _dot_nt_sliced
    re-reads the rows from A and B, and a_tile / b_tile go unused (the compiler drops their loads when
    nothing else reads them). Every kernel that must agree bitwise on a logit calls this with the same
    operands in the same orientation and tile shape. EVEN_C (C == C_PAD): constant stride, no channel mask.
    """
    if a_tile.dtype.primitive_bitwidth < 32:
        out = _dot_nt_tensor_core(a_tile, b_tile, scale_log2e, SCALE_A=SCALE_A, OUT_DTYPE=OUT_DTYPE)
    else:
        out = _dot_nt_sliced(A, a_rows, a_mask, B, b_rows, b_mask, C, scale_log2e, SCALE_A=SCALE_A, C_PAD=C_PAD,
                             K_CHUNK=K_CHUNK, EVEN_C=EVEN_C, OUT_DTYPE=OUT_DTYPE, DOT=DOT)
    return out
