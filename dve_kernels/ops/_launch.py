"""Launch policy (host side): what every launcher picks at run time, and the list of compiled specialisations.

Everything a launcher can choose is decided here, in one place, so that
:func:`dve_kernels.ops.kernel_specializations` can enumerate it for ahead-of-time compilation, and the
launchers (:func:`launch_plan`) and the AOT list (:func:`specialization_cases`) build their compile-time
arguments with the same :func:`kernel_constexprs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import triton

from .. import precision
from .._validation import TRITON_MAX_CHANNELS
from .._env import triton_interpreter_requested

# Every launch pads the channel count to one of these (tl.dot needs K >= 16 and power-of-two blocks).
# Validation refuses more channels than the largest pad (one number, in dve_kernels/_validation.py).
MAX_CHANNELS = TRITON_MAX_CHANNELS
CHANNEL_PADS = tuple(16 << k for k in range(8) if 16 << k <= MAX_CHANNELS)  # (16, 32, 64, 128, 256)
# Feature dtypes the kernels accept; float64 accumulates in float64, the others in float32.
FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# The dot algorithms a launch can pick per feature dtype (constexpr DOT, see dve_kernels/precision.py): float32 has
# IEEE FMA dots (torch.get_float32_matmul_precision() == "highest", the default) and single-pass TF32 ("high",
# "medium"); the others take "ieee" (ignored by 16-bit tensor-core dots; float64 has only FMA dots).
DTYPE_DOTS = tuple((dtype, dot) for dtype in FEATURE_DTYPES
                   for dot in (("ieee", "tf32") if dtype == torch.float32 else ("ieee",)))


def dot_algorithm(dtype: torch.dtype) -> str:
    """The constexpr DOT of a launch on features of ``dtype`` (see DTYPE_DOTS)."""
    return precision.float32_dot() if dtype == torch.float32 else "ieee"


def dot_suffix(dot: str) -> str:
    """The kernel-name suffix of a dot algorithm: none for IEEE, ``_tf32`` otherwise."""
    return "" if dot == "ieee" else f"_{dot}"


# Distance powers with their own code path (constexpr POW_MODE); anything else is POW_GENERAL.
POW_FOURTH_ROOT, POW_SQRT, POW_SQUARE, POW_GENERAL = 0, 1, 2, 3
POW_MODES = (POW_FOURTH_ROOT, POW_SQRT, POW_SQUARE, POW_GENERAL)
LOG2_E = 1.4426950408889634  # softmax runs in base 2: exp(x) = exp2(x * log2(e)), folded into the scale
# Every launch and AOT compile asks for FMA contraction explicitly (Triton 3.10 stops doing it by default): the
# kernels are written for it (exp2's argument, the Newton steps, the distance are one FFMA each), and the
# static kernel report counts those instructions.
FP_FUSION = True
# 32/64-bit launches let ptxas use every register a thread may have (.maxnreg 255): left to itself it held some
# FMA-dot kernels at 128 and spilled. Why each rule of launch_config is there, with the spills that set it:
# docs/gpu.md, "Launch configurations".
MAX_REGISTERS = 255


@triton.jit
def _interpreter_probe():
    pass


def interpreter_active() -> bool:
    """Whether this Triton runs kernels in its interpreter (TRITON_INTERPRET was set before triton's import):
    then ``triton.jit`` makes interpreted functions."""
    from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415

    return isinstance(_interpreter_probe, InterpretedFunction)


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


def launch_config(pass_name: str, c_pad: int, dtype: torch.dtype, even_c: bool = True) -> LaunchConfig:
    """Block sizes, channel slice, warps and pipeline stages for one pass at one (C_PAD, dtype).

    16-bit data: tensor-core dots on whole register tiles, from the Triton tutorial's 128 x 64 at head dimension 64,
    rows halved as C_PAD grows. 32/64-bit data: FMA dots on small tiles over K_CHUNK-channel slices (an FMA dot
    keeps every channel of its operand rows in registers). Each exception below has one line on why; how each was
    found (the spills, the modelled bounds of bench/kernel_report.py) is in docs/gpu.md, "Launch configurations".
    tests/test_triton_aot.py compiles every result for sm_80 and sm_90 and fails on any spill or shared-memory
    overflow. No GPU has run them yet: retune with bench/ on one.
    ``pass_name`` is "exchange_fwd", "exchange_bwd" (both backward kernels), "warp_loss_fwd" or "warp_loss_bwd";
    ``even_c`` whether C == C_PAD (the ``_ragged`` specialisations are compiled with their own configuration).
    """
    if pass_name not in ("exchange_fwd", "exchange_bwd", "warp_loss_fwd", "warp_loss_bwd"):
        raise ValueError(f"unknown pass {pass_name!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    if itemsize == 2:
        if pass_name == "exchange_fwd":
            block_n, block_m = (128, 64) if c_pad <= 64 else (64, 64) if c_pad <= 128 else (32, 32)
        elif pass_name == "warp_loss_fwd":  # no accumulator tile; smaller above C_PAD 64 (spills)
            block_n, block_m = (128, 64) if c_pad <= 64 else (64, 64) if c_pad == 128 else (64, 32)
        else:  # backward: two accumulator tiles plus operand tiles per program (64 x 64 spilled)
            block_n, block_m = (64, 32) if c_pad <= 64 else (32, 32)
            if not even_c and (pass_name, c_pad) in (("exchange_bwd", 32), ("exchange_bwd", 64), ("warp_loss_bwd", 64)):
                block_n = 32  # masked channel loads spilled at 64 x 32; C == C_PAD keeps 64 x 32 (faster)
            if pass_name == "warp_loss_bwd" and c_pad == 256:
                block_n = 16  # the general power's exp2 + log2 spilled at 32 x 32
        num_warps = 8 if block_n * c_pad >= 128 * 64 else 4
        if pass_name == "warp_loss_fwd":
            num_warps = 8  # the three-tile loop of pow = 0.5 spilled with 4; MUFU-bound either way
        if pass_name == "warp_loss_bwd" and c_pad == 128:
            num_warps = 8  # 4 warps spilled
        if pass_name == "exchange_fwd" and c_pad == 256:
            num_warps = 4  # 8 warps were capped at 128 registers and spilled; 4 also issue less
        # ptxas held these at 128 registers and spilled; with every register a thread may have they do not
        max_registers = MAX_REGISTERS if pass_name == "warp_loss_bwd" and c_pad == 16 else None
        if pass_name == "exchange_bwd" and c_pad == 128 and not even_c:
            block_n = 16  # 32 x 32 spilled even at 255 registers
        if pass_name == "exchange_bwd" and c_pad == 64 and not even_c:
            max_registers = MAX_REGISTERS
        return LaunchConfig(block_n, block_m, num_warps, 3 if c_pad <= 128 else 2, c_pad, max_registers)
    # 32/64-bit: one configuration for forward and backward of an op, so that both compute every logit bitwise
    # alike (a one-hot row then gets P = 1.0 exactly in the backward and cancels, as the dense computation does)
    num_warps = 4 if c_pad * itemsize <= 256 or pass_name == "warp_loss_fwd" else 8  # warp fwd: 8 spilled
    k_chunk = 32 if itemsize == 4 and num_warps == 8 else 16  # 16 spilled for float32 with 8 warps
    return LaunchConfig(16, 16, num_warps, 1, k_chunk, MAX_REGISTERS)  # one stage: a second spilled float64 C_PAD 256


def kernel_constexprs(pass_name: str, c_pad: int, dtype: torch.dtype, even_c: bool, dot: str,
                      pow_mode: int | None = None) -> tuple[dict, LaunchConfig]:
    """The compile-time arguments of a pass's kernels and its LaunchConfig, built once for the launchers and the
    AOT list alike (``pow_mode``: the warp loss's POW_MODE; the exchange has none)."""
    config = launch_config(pass_name, c_pad, dtype, even_c)
    constexprs = dict(C_PAD=c_pad, BLOCK_N=config.block_n, BLOCK_M=config.block_m, K_CHUNK=config.k_chunk,
                      IS_FP64=dtype == torch.float64, EVEN_C=even_c, DOT=dot)
    if pow_mode is not None:
        constexprs["POW_MODE"] = pow_mode
    return constexprs, config


def launch_options(config: LaunchConfig) -> dict:
    """The launch keywords of a LaunchConfig (warps, stages, FMA contraction, register limit)."""
    return dict(num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=FP_FUSION,
                maxnreg=config.max_registers)


class LaunchPlan(NamedTuple):
    """What a launcher needs for one call: the contiguous row and column features, their sizes, the kernels'
    compile-time arguments (``constexprs``), the launch keywords (``options``) and the block sizes (``config``)."""

    rows: torch.Tensor
    cols: torch.Tensor
    batch: int
    n: int
    m: int
    c: int
    constexprs: dict
    options: dict
    config: LaunchConfig


def launch_plan(pass_name: str, rows: torch.Tensor, cols: torch.Tensor, pow_mode: int | None = None) -> LaunchPlan:
    """The launchers' common opening, for ``rows`` (B, N, C) and ``cols`` (B, M, C) of one dtype and device: checks
    that the kernels can run, reads contiguous copies, and builds the pass's constexprs and launch options with
    the dot algorithm the matmul precision asks for (kernel_constexprs, dot_algorithm)."""
    check_runnable(rows)
    rows, cols = rows.contiguous(), cols.contiguous()
    batch, n, c = rows.shape
    c_pad = channel_pad(c)
    constexprs, config = kernel_constexprs(pass_name, c_pad, rows.dtype, c == c_pad, dot_algorithm(rows.dtype),
                                           pow_mode)
    return LaunchPlan(rows, cols, batch, n, cols.shape[1], c, constexprs, launch_options(config), config)


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


def check_runnable(tensor: torch.Tensor) -> None:
    """Fail clearly when a CPU tensor reaches the kernels without the interpreter switched on."""
    if tensor.device.type == "cuda":
        return
    if not triton_interpreter_requested():
        raise RuntimeError(
            f"the Triton kernels got tensors on {tensor.device}; CPU tensors run only in Triton's interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported)"
        )


COORDINATE_ALIGN = 16  # planar buffers: planes start 64-byte aligned (see _tiles._coordinate_stride)


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


def log2_scale(scale: float) -> float:
    return scale * LOG2_E


def lse_to_natural(lse2: torch.Tensor) -> torch.Tensor:
    """The kernels' base-2 log-sum-exp2 (float32, or float64) as the ops' saved statistic: natural log, float64.

    Every backend saves this one convention (dve_kernels/_library.py). The float32 rounding of 16-bit kernels'
    own value stays; it is a common factor of every probability of its row, which the backward kernels divide
    out again by the recomputed row sum.
    """
    return lse2.to(torch.float64) * (1.0 / LOG2_E)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the kernels' own lse for features of ``dtype``: float64 for 32/64-bit data (the forward forms it
    per row in float64, the backward splits it into hi + lo: _tiles._exp2_minus_lse); float32 for 16-bit data."""
    return torch.float32 if dtype.itemsize == 2 else torch.float64


def lse_from_natural(lse: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of :func:`lse_to_natural`, in :func:`lse_dtype` for features of ``dtype``."""
    return (lse.to(torch.float64) * LOG2_E).to(lse_dtype(dtype)).contiguous()


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


class SpecializationCase(NamedTuple):
    """One (dtype, dot algorithm, channel pad, EVEN_C) the launchers can meet, with what every kernel's AOT
    signature and name need: pointer types of the features (``feat``), of the float32/float64 statistics and
    coordinates (``stat``) and of the lse; the sizes and scalars; the name's tag and ragged suffix."""

    dtype: torch.dtype
    dot: str
    c_pad: int
    even_c: bool
    feat: str
    stat: str
    lse: str
    ints: dict
    tag: str
    ragged: str

    def scalars(self, *names: str) -> dict:
        """The float32 hi / lo pairs of the scalars ``names`` (see split_scalar)."""
        return {f"{name}_{part}": "fp32" for name in names for part in ("HI", "LO")}


def specialization_cases():
    """Every SpecializationCase, in the order of the AOT list (see kernel_specializations)."""
    for dtype, dot in DTYPE_DOTS:
        for c_pad in CHANNEL_PADS:
            for even_c in (True, False):
                yield SpecializationCase(
                    dtype, dot, c_pad, even_c, feat="*" + triton_type(dtype),
                    stat="*" + triton_type(precision.accumulate_dtype(dtype)), lse="*" + triton_type(lse_dtype(dtype)),
                    ints=dict(N="i32", M="i32", C="i32"), tag=f"{triton_type(dtype)}{dot_suffix(dot)}_c{c_pad}",
                    ragged="" if even_c else "_ragged")

