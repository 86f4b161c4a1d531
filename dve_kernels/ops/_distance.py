"""Distance powers ``||d|| ** pow`` from squared distances, on the device (the warp loss's only geometry)."""

from __future__ import annotations

import triton
import triton.language as tl

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


