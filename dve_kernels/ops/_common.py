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


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes of one launch: BLOCK_N query/source rows per program, BLOCK_M key/target rows per step."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int


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


def channel_pad(channels: int) -> int:
    """The padded channel count C_PAD for C channels: next power of two, at least 16."""
    return max(16, triton.next_power_of_2(channels))


def launch_config(pass_name: str, c_pad: int, dtype: torch.dtype) -> LaunchConfig:
    """Block sizes, warps and pipeline stages for one pass at one (C_PAD, dtype).

    How they were chosen: no GPU was available while writing this, so the starting point is the
    FlashAttention-2 / Triton-tutorial practice (128 x 64 tiles, 4 warps, for 16-bit data with head
    dimension <= 64, 8 warps at 128), then shrunk so that, per program, the register-resident tiles
    (accumulator + query tile, plus dO in the backward) stay near 64 registers per thread each and the
    pipelined shared-memory buffers fit an A100 (164 KiB); 4-byte data halves the rows of 2-byte data,
    8-byte data halves them again. The AOT test (tests/test_triton_aot.py) compiles every result for
    sm_80 and sm_90 and fails on spills or shared-memory overflow; retune on a GPU with bench/.
    ``pass_name`` is one of "exchange_fwd", "exchange_bwd" (both backward kernels), "warp_fwd", "warp_bwd".
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    # bytes of one row of a tile: what limits registers and shared memory
    row_bytes = c_pad * itemsize
    if pass_name == "exchange_fwd":
        # registers: q tile + fp32 accumulator (BLOCK_N x C_PAD each); shared: the aux tile, pipelined
        block_n = 128 if row_bytes <= 128 else 64 if row_bytes <= 512 else 32
        block_m = 64 if row_bytes <= 256 else 32
        num_warps = 4 if c_pad * block_n <= 64 * 128 else 8
    elif pass_name == "warp_fwd":
        # only a scalar accumulator per row: the src tile is the only large register tile
        block_n = 128 if row_bytes <= 256 else 64 if row_bytes <= 512 else 32
        block_m = 64 if row_bytes <= 256 else 32
        num_warps = 4 if c_pad * block_n <= 64 * 128 else 8
    elif pass_name in ("exchange_bwd", "warp_bwd"):
        # three register tiles per program (operand, its gradient accumulator, dO or src/tgt):
        # smaller tiles than the forward, as in FlashAttention-2's backward
        block_n = 64 if row_bytes <= 256 else 32
        block_m = 64 if row_bytes <= 256 else 32
        if pass_name == "exchange_bwd" and row_bytes > 512:
            block_n = block_m = 16
        num_warps = 4 if c_pad * block_n <= 64 * 64 else 8
    else:
        raise ValueError(f"unknown pass {pass_name!r}")
    num_stages = 2 if row_bytes * max(block_n, block_m) > 32 * 1024 else 3
    return LaunchConfig(block_n, block_m, num_warps, num_stages)


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
def _prescale(tile, scale_log2e):
    """Fold the softmax scale into a 32/64-bit operand tile before the dot, see _postscale."""
    if tile.dtype.primitive_bitwidth >= 32:
        tile = tile * scale_log2e
    return tile


@triton.jit
def _postscale(dot, operand, scale_log2e):
    """Base-2 logits from ``dot``, one of whose operands (``operand``) went through _prescale.

    Why two places: for 32/64-bit data, scaling one operand tile (once per program) rounds each small
    product term instead of the large logit (|logit| up to ~1.4e4 in base 2, where a float32 rounding is
    ~1e-3 absolute; SPEC.md asks for correct results at logits of 1e4). 16-bit operands must stay 16-bit for
    the tensor cores, so their float32 dot result is scaled instead.
    """
    if operand.dtype.primitive_bitwidth < 32:
        dot = dot * scale_log2e
    return dot


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
def _distance_power(r2, POW_HALF, POW_MODE: tl.constexpr, IS_FP64: tl.constexpr):
    """||d|| ** pow from the squared distance r2, with pow a compile-time case where it can be.

    POW_HALF is pow / 2 (only read by the general case: r2 ** (pow/2) = exp2(pow/2 * log2(r2)),
    two MUFU ops; log2(0) = -inf and pow > 0 give exp2(-inf) = 0 with no guard).
    """
    if POW_MODE == 0:
        if IS_FP64:
            dist = tl.sqrt(tl.sqrt(r2))  # float64 is never the fast path: keep it exact
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


def make_specialization(name, kernel, arg_types: dict, constexprs: dict, config: LaunchConfig) -> Specialization:
    """A Specialization whose signature lists every kernel argument (constexprs typed "constexpr")."""
    names = kernel.arg_names
    signature = {arg: arg_types.get(arg, "constexpr") for arg in names}
    missing = [arg for arg in names if signature[arg] == "constexpr" and arg not in constexprs]
    if missing:
        raise ValueError(f"{name}: no type or constexpr value for {missing}")
    pointers = tuple(arg for arg, kind in signature.items() if kind.startswith("*"))
    return Specialization(name, kernel, signature, dict(constexprs), config.num_warps, config.num_stages, pointers)
