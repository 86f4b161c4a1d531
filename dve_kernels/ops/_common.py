"""Pieces shared by the Triton ops: launch configuration, scalar splitting, the distance power.

Everything a launcher can choose at run time is decided here, in one place, so that
:func:`dve_kernels.ops.kernel_specializations` can enumerate it for ahead-of-time compilation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

# Every launch pads the channel count to one of these (tl.dot needs K >= 16 and power-of-two blocks).
CHANNEL_PADS = (16, 32, 64, 128, 256)
MAX_CHANNELS = CHANNEL_PADS[-1]
# Feature dtypes the kernels accept; float64 accumulates in float64, the others in float32.
FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Distance powers with their own code path (constexpr POW_MODE); anything else is POW_GENERAL.
POW_FOURTH_ROOT, POW_SQRT, POW_SQUARE, POW_GENERAL = 0, 1, 2, 3
POW_MODES = (POW_FOURTH_ROOT, POW_SQRT, POW_SQUARE, POW_GENERAL)
LOG2_E = 1.4426950408889634  # softmax runs in base 2: exp(x) = exp2(x * log2(e)), folded into the scale
# Every launch and AOT compile asks for FMA contraction explicitly (Triton 3.10 stops doing it by default): the
# kernels are written for it (exp2's argument, the Newton steps, the distance are one FFMA each), and the
# static kernel report counts those instructions.
FP_FUSION = True
# 32/64-bit launches let ptxas use every register a thread may have (.maxnreg 255; 65536 per SM covers 8 warps at
# 255): left to itself, ptxas held some 8-warp FMA-dot kernels at 128 registers and spilled (warp_bwd_tgt fp32
# C_PAD 128 on sm_80: 24 bytes at 128 registers, none at 148 with the limit). 16-bit launches keep ptxas's own
# choice: with the limit, the three-tile warp-loss forward spilled on sm_80 (116 bytes at 255; none at 183 without).
MAX_REGISTERS = 255


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes of one launch: BLOCK_N query/source rows per program, BLOCK_M key/target rows per step,
    K_CHUNK channels per slice of the logit dot (32/64-bit data; 16-bit data takes all C_PAD at once)."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int
    k_chunk: int = 16
    max_registers: int | None = None  # .maxnreg for ptxas (see MAX_REGISTERS); None: ptxas decides


@dataclass
class Specialization:
    """Everything needed to compile one kernel variant ahead of time (see ``_aot.py``)."""

    name: str
    kernel: object  # the triton.JITFunction
    signature: dict  # argument name -> Triton type string ("*fp32", "i32", "fp32", "constexpr")
    constexprs: dict  # argument name -> value
    num_warps: int
    num_stages: int
    pointer_args: tuple = field(default_factory=tuple)  # names that the runtime sees 16-byte aligned
    tiles_per_iteration: int = 1  # tiles the steady-state loop handles per iteration (unrolled), for bench/
    max_registers: int | None = None  # LaunchConfig.max_registers


def channel_pad(channels: int) -> int:
    """The padded channel count C_PAD for C channels: next power of two, at least 16."""
    return max(16, triton.next_power_of_2(channels))


def launch_config(pass_name: str, c_pad: int, dtype: torch.dtype) -> LaunchConfig:
    """Block sizes, channel slice, warps and pipeline stages for one pass at one (C_PAD, dtype).

    How they were chosen (no GPU was available while writing this; retune with bench/ on one):
    16-bit data runs its dots on tensor cores with whole register tiles, as FlashAttention-2 does: the
    start is the Triton tutorial's 128 x 64 tiles at head dimension 64, then rows are halved as C_PAD
    grows and warps doubled where a BLOCK x C_PAD float32 accumulator would pass ~64 registers per
    thread. 32/64-bit data runs FMA dots (float32 must stay IEEE, SPEC.md section 4): small tiles
    and K_CHUNK-channel slices of the logit dot, because an FMA dot keeps every channel of its operand
    rows in registers (32 x 32 tiles spilled from C_PAD = 16 on in float32, 16 x 16 did not; float64
    needs 8 warps from C_PAD = 64 on). Every result is compiled for sm_80 and sm_90 by
    tests/test_triton_aot.py (DVE_AOT_FULL=1 for all of them), which fails on any spill or shared-memory
    overflow. No GPU has run them yet: speed comes only from the modelled bounds of bench/kernel_report.py
    (which chose 8 warps for the warp-loss forward and 4 for the exchange forward at C_PAD = 256, see below).
    ``pass_name`` is "exchange_fwd", "exchange_bwd" (both backward kernels), "warp_fwd" or "warp_bwd".
    """
    if pass_name not in ("exchange_fwd", "exchange_bwd", "warp_fwd", "warp_bwd"):
        raise ValueError(f"unknown pass {pass_name!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if itemsize == 2:
        if pass_name == "exchange_fwd":
            block_n, block_m = (128, 64) if c_pad <= 64 else (64, 64) if c_pad <= 128 else (32, 32)
        elif pass_name == "warp_fwd":  # no accumulator tile: only the src tile stays in registers
            # (with the three-tile loop of pow = 0.5, 128 x 64 spilled 4 bytes on sm_90 at C_PAD = 128 for a C
            # below it, 64 x 64 spilled 64 bytes on sm_80 at C_PAD = 256)
            block_n, block_m = (128, 64) if c_pad <= 64 else (64, 64) if c_pad == 128 else (64, 32)
        else:  # backward: two accumulator tiles plus operand tiles per program (64 x 64 spilled on sm_80)
            block_n, block_m = (64, 32) if c_pad <= 64 else (32, 32)
            if pass_name == "warp_bwd" and c_pad == 256:
                block_n = 16  # 32 x 32 spilled on sm_80 with the general power (exp2 + log2 per pair)
        num_warps = 8 if block_n * c_pad >= 128 * 64 else 4
        if pass_name == "warp_fwd":
            # 8 warps whatever C_PAD: the three-tile loop of pow = 0.5 reached 255 registers and spilled on sm_80
            # with 4 (C_PAD 32, 64); at C_PAD 64 on sm_90 4 warps would issue 4 % less (0.568 against 0.591 slots
            # per pair) but the pass is MUFU-bound there either way
            num_warps = 8
        if pass_name == "warp_bwd" and c_pad == 128:
            num_warps = 8  # 4 warps spilled on sm_80 (32 x 32 with the general power, 16 x 32 with the others)
        if pass_name == "exchange_fwd" and c_pad == 256:
            num_warps = 4  # 8 warps were capped at 128 registers and spilled on sm_90; 4 also issue 37 % less

        return LaunchConfig(block_n, block_m, num_warps, 3 if c_pad <= 128 else 2, c_pad)
    # 32/64-bit: one configuration for forward and backward of an op, so that both compute every logit
    # with the same expression on the same tile shape and get bitwise the same value: then a row whose
    # softmax is one-hot in float32 gets P = exp2(logit - lse) = 1.0 exactly in the backward, and its
    # gradient cancels exactly, as in the dense computation (SPEC.md: logits of 1e4).
    # (the warp-loss forward has no accumulator tile: 4 warps whatever C_PAD; with 8, ptxas capped it at
    # 64 registers per thread and spilled on sm_80)
    num_warps = 4 if c_pad * itemsize <= 256 or pass_name == "warp_fwd" else 8
    # channel slices: 16 wide, but 32 for float32 with 8 warps (at 16, ptxas capped that case at 128
    # registers and spilled on sm_80: empirical, like everything here)
    k_chunk = 32 if itemsize == 4 and num_warps == 8 else 16
    # one pipeline stage: the FMA dots re-read their slices from L1/L2 anyway, and a second stage of prefetched
    # slices pushed float64 at C_PAD = 256 past 255 registers (spills on sm_90; 182 registers with one stage)
    return LaunchConfig(16, 16, num_warps, 1, k_chunk, MAX_REGISTERS)


def pow_mode(pow: float) -> int:
    """The constexpr POW_MODE for a distance power."""
    if pow == 0.5:
        return POW_FOURTH_ROOT
    if pow == 1.0:
        return POW_SQRT
    if pow == 2.0:
        return POW_SQUARE
    return POW_GENERAL


def split_scalar(value: float) -> tuple[float, float]:
    """``value`` as a float32 pair ``hi + lo``.

    Triton passes Python floats to kernels as float32; float64 launches re-join the two halves in
    float64 (about 48 significant bits), so a scale such as 0.1 is not rounded to float32 there.
    """
    hi = float(torch.tensor(value, dtype=torch.float32))
    lo = float(torch.tensor(value - hi, dtype=torch.float32))
    return hi, lo


def triton_type(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}[dtype]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 features keep float64 statistics; every other dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_runnable(tensor: torch.Tensor) -> None:
    """Fail clearly when a CPU tensor reaches the kernels without the interpreter switched on."""
    if tensor.device.type == "cuda":
        return
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    from .exchange import _exchange_fwd_kernel  # noqa: PLC0415

    if not isinstance(_exchange_fwd_kernel, InterpretedFunction):
        raise RuntimeError(
            f"the Triton kernels got tensors on {tensor.device}; CPU tensors run only in Triton's interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported)"
        )


@triton.jit
def _join_scalar(HI, LO, IS_FP64: tl.constexpr):
    """Re-join a scalar passed as a float32 pair (see split_scalar); float32 launches use HI only."""
    # adding to a typed zero (rather than .to()) also works on the plain Python floats of the interpreter
    if IS_FP64:
        return (tl.zeros([], tl.float64) + HI) + LO
    else:
        return tl.zeros([], tl.float32) + HI


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


COORDINATE_ALIGN = 16


@triton.jit
def _coordinate_stride(rows):
    """The row stride of the planar coordinate buffers (B, 2, stride): rows rounded up to 16, so that
    every x and y plane starts 64-byte aligned and per-column coordinate loads can be vectors."""
    return tl.cdiv(rows, 16) * 16


def aligned_stride(rows: int) -> int:
    """The plane stride of the planar buffers: ``rows`` rounded up to COORDINATE_ALIGN (as _coordinate_stride)."""
    return -(-rows // COORDINATE_ALIGN) * COORDINATE_ALIGN


def planar_coordinates(xy: torch.Tensor, dtype: torch.dtype, factor: float = 1.0) -> torch.Tensor:
    """(B, R, 2) coordinates as the kernels read them: (B, 2, stride) planes of x and y, stride = R rounded
    up to COORDINATE_ALIGN (the padding is never read), in ``dtype``, times ``factor``. O(B·R)."""
    batch, rows, _ = xy.shape
    stride = aligned_stride(rows)
    out = torch.zeros((batch, 2, stride), dtype=dtype, device=xy.device)
    out[:, :, :rows] = xy.transpose(1, 2) * factor if factor != 1.0 else xy.transpose(1, 2)
    return out


@triton.jit
def _load_vector(base, offs, mask, MASKED: tl.constexpr):
    """``base[offs]`` (0 where masked off, when MASKED)."""
    if MASKED:
        values = tl.load(base + offs, mask=mask, other=0.0)
    else:
        values = tl.load(base + offs)
    return values


@triton.jit
def _softmax_tile(logits, m_i, mask_m, scale_log2e, SCALED: tl.constexpr, MASK_M: tl.constexpr):
    """One tile of an online softmax: the new running row max ``m_new`` and ``p = exp2(logit - m_new)``.

    SCALED (32/64-bit data): ``logits`` already carry scale·log2(e) (see _dot_nt). Otherwise (16-bit data)
    they are the raw tensor-core dot products and ``scale_log2e >= 0`` (the kernels fold the scale's sign into
    their row tile, which is exact): the scaled row max is then the raw one times the scale, and exp2's
    argument is one FFMA per pair. MASK_M: columns masked off get p = 0 and do not enter the max.
    """
    if SCALED:
        if MASK_M:
            logits = tl.where(mask_m[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        p = tl.exp2(logits - m_new[:, None])  # masked columns: exp2(-inf) = 0
    elif MASK_M:
        m_new = tl.maximum(m_i, tl.max(tl.where(mask_m[None, :], logits, float("-inf")), 1) * scale_log2e)
        p = tl.where(mask_m[None, :], tl.exp2(logits * scale_log2e - m_new[:, None]), 0.0)
    else:
        m_new = tl.maximum(m_i, tl.max(logits, 1) * scale_log2e)
        p = tl.exp2(logits * scale_log2e - m_new[:, None])
    return m_new, p


@triton.jit
def _dot_nt(A, a_rows, a_mask, a_tile, B, b_rows, b_mask, b_tile, C, scale_log2e,
            SCALE_A: tl.constexpr, C_PAD: tl.constexpr, K_CHUNK: tl.constexpr, OUT_DTYPE: tl.constexpr,
            EVEN_C: tl.constexpr = False):
    """dot(A_tile, B_tile^T) over the C channels: (rows of A) x (rows of B), times scale_log2e if SCALE_A.

    16-bit data: one tensor-core dot of the register tiles a_tile / b_tile the caller loaded, scaled
    afterwards in float32.

    32/64-bit data: ``input_precision="ieee"`` makes this an FMA dot, whose operand fragments hold the whole
    reduction dimension per thread; at C_PAD = 64..256 that spills. So the channels are walked in
    K_CHUNK-wide slices re-read from memory (L1/L2 hits: the caller has the same rows in flight), and
    a_tile / b_tile go unused (the compiler drops their loads when nothing else reads them). The scale
    goes into the A slice before the dot: each small product term is rounded instead of the large logit
    (|logit| up to ~1.4e4 in base 2, where one float32 rounding is ~1e-3; SPEC.md promises correct results
    at logits of 1e4). Every kernel that must agree bitwise on a logit calls this with the same
    operands in the same orientation and tile shape. EVEN_C (C == C_PAD): constant stride, no channel mask.
    """
    if a_tile.dtype.primitive_bitwidth < 32:
        out = tl.dot(a_tile, tl.trans(b_tile), out_dtype=OUT_DTYPE)
        if SCALE_A:
            out = out * scale_log2e
    else:
        out = tl.zeros([a_rows.shape[0], b_rows.shape[0]], OUT_DTYPE)
        stride = C_PAD if EVEN_C else C
        # a runtime trip count even when EVEN_C: a compile-time one let the compiler unroll the slices and
        # spill on sm_80; C, not C_PAD: no slice of padding only
        for k_start in range(0, C, K_CHUNK):
            offs_k = k_start + tl.arange(0, K_CHUNK)
            mask_k = offs_k < stride
            a = tl.load(A + a_rows[:, None] * stride + offs_k[None, :], mask=a_mask[:, None] & mask_k[None, :],
                        other=0.0)
            if SCALE_A:
                a = a * scale_log2e
            b = tl.load(B + b_rows[:, None] * stride + offs_k[None, :], mask=b_mask[:, None] & mask_k[None, :],
                        other=0.0)
            out += tl.dot(a, tl.trans(b), input_precision="ieee", out_dtype=OUT_DTYPE)
    return out


@triton.jit
def _fourth_root_fma(r2):
    """r2 ** 0.25 for float32 r2 >= 0 using only integer and FMA-pipe instructions (no MUFU).

    Why: the softmax already spends one MUFU (ex2) per pair, and MUFU runs at 1/8 of the FMA rate;
    sqrt(sqrt(r2)) would triple the MUFU work of the warp-loss loops. The trade: ~18 FMA-pipe
    instructions instead of 2 MUFU ops; on GPU the faster choice depends on which pipe saturates first
    (see the static kernel report in bench/). Method: y ~ r2 ** -0.25 from the exponent bits (magic
    constant tuned for the smallest start error, 3.1 %), three Newton steps
    y <- y (1.25 - 0.25 r2 y^4) (error 3e-2 -> 8e-3 -> 5e-5 -> 6e-7, the last set by float32 rounding),
    then r2 ** 0.25 = r2 y^3. The iteration runs on max(r2, 1e-30): for r2 == 0 (a pixel that lands
    exactly on a target) the start guess would overflow y^4 to inf and 0 * inf = NaN; with the clamp y
    stays ~3e7, and the final product with the unclamped r2 gives exactly 0 (NaN still propagates).
    """
    r2_safe = tl.maximum(r2, 1e-30)
    bits = r2_safe.to(tl.int32, bitcast=True)
    y = (1331193446 - (bits >> 2)).to(tl.float32, bitcast=True)
    quarter_r2 = 0.25 * r2_safe
    y = y * (1.25 - quarter_r2 * ((y * y) * (y * y)))
    y = y * (1.25 - quarter_r2 * ((y * y) * (y * y)))
    y = y * (1.25 - quarter_r2 * ((y * y) * (y * y)))
    return r2 * (y * y * y)


@triton.jit
def _fourth_root_newton(r2x4):
    """r2 ** 0.25 from r2x4 = 4 r2 > 0 (float32), with one MUFU (rsqrt) and 8 FMA/integer-pipe instructions.

    For 16-bit features, where the softmax's one MUFU per pair leaves room for a second (MUFU caps a pass
    at ~1.9e12 pairs/s on an H100 with two, ~1.3e12 with three). h = rsqrt(4 r2) = r2 ** -0.5 / 2 (MUFU, ~2^-23
    relative error); w ~ r2 ** 0.25 from the exponent bits of 4 r2 (constant tuned for the smallest start
    error, 3.4 %); two Newton steps w <- w (1.5 - h w^2) for w = (2h) ** -0.5 = r2 ** 0.25 (3.4e-2 -> 1.8e-3
    -> 4.8e-6 relative), far below the 2^-8 resolution of 16-bit features (float32 features keep the 6e-7
    of _fourth_root_fma). Taking 4 r2 is what saves the multiplication by 1/2 in each step: the launchers
    double the coordinates. r2x4 = +inf gives a finite number (the launcher marks such rows non-finite).
    """
    h = tl.rsqrt(r2x4)
    w = (794507078 + (r2x4.to(tl.int32, bitcast=True) >> 2)).to(tl.float32, bitcast=True)
    w = w * (1.5 - h * (w * w))
    w = w * (1.5 - h * (w * w))
    return w


@triton.jit
def _fourth_root_mufu(r2x4):
    """sqrt(2) · r2 ** 0.25 = rsqrt(rsqrt(4 r2)): two MUFU, two issue slots (relative error ~2e-7)."""
    return tl.rsqrt(tl.rsqrt(r2x4))


@triton.jit
def _distance_power(r2, POW_HALF, POW_MODE: tl.constexpr, IS_FP64: tl.constexpr, LOW_PRECISION: tl.constexpr = False):
    """||d|| ** pow from the squared distance r2, with pow a compile-time case where it can be.

    POW_HALF is pow / 2 (only read by the general case: r2 ** (pow/2) = exp2(pow/2 * log2(r2)),
    two MUFU ops; log2(0) = -inf and pow > 0 give exp2(-inf) = 0 with no guard). LOW_PRECISION (16-bit
    features): r2 is 4 r2 for pow = 0.5 (doubled coordinates) and the fourth root has ~5e-6 relative error
    instead of ~6e-7, for fewer instructions (_fourth_root_newton).
    """
    if POW_MODE == 0:
        if IS_FP64:
            dist = tl.sqrt(tl.sqrt(r2))  # float64 is never the fast path: keep it exact
        elif LOW_PRECISION:
            dist = _fourth_root_newton(r2)
        else:
            dist = _fourth_root_fma(r2)
    elif POW_MODE == 1:
        dist = tl.sqrt(r2)  # one MUFU; an FMA Newton square root costs ~13 instructions instead
    elif POW_MODE == 2:
        dist = r2
    else:
        dist = tl.exp2(POW_HALF * tl.log2(r2))
    return dist


def log2_scale(scale: float) -> float:
    return scale * LOG2_E


def make_specialization(name, kernel, arg_types: dict, constexprs: dict, config: LaunchConfig,
                        tiles_per_iteration: int = 1) -> Specialization:
    """A Specialization whose signature lists every kernel argument (constexprs typed "constexpr")."""
    names = kernel.arg_names
    signature = {arg: arg_types.get(arg, "constexpr") for arg in names}
    missing = [arg for arg in names if signature[arg] == "constexpr" and arg not in constexprs]
    if missing:
        raise ValueError(f"{name}: no type or constexpr value for {missing}")
    pointers = tuple(arg for arg, kind in signature.items() if kind.startswith("*"))
    return Specialization(name, kernel, signature, dict(constexprs), config.num_warps, config.num_stages, pointers,
                          tiles_per_iteration, config.max_registers)
