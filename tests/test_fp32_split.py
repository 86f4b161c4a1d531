"""The three-way TF32 split of float32 operands (``dve_kernels.ops._tiles._split_tf32`` / ``_dot``), in the interpreter.

Against an independent float64 computation: both halves exactly representable in TF32 (at most 11 significant
bits), ``x - hi - lo`` at most 2^-23 |x|, and the split dot within a few float32 roundings of the float64 product.
The kernels' accuracy through the split is tested with ``DVE_FP32_DOT=3xtf32`` (tests/test_gpu_check.py, and
``DVE_FP32_DOT=3xtf32 pytest tests/test_triton_ops.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from dve_kernels.ops._tiles import _dot, _split_tf32


@triton.jit
def _split_kernel(X, HI, LO, N: tl.constexpr):
    offs = tl.arange(0, N)
    hi, lo = _split_tf32(tl.load(X + offs))
    tl.store(HI + offs, hi)
    tl.store(LO + offs, lo)


@triton.jit
def _dot_kernel(A, B, OUT, DOT_ALGO: tl.constexpr):
    rows = tl.arange(0, 16)
    a = tl.load(A + rows[:, None] * 16 + rows[None, :])
    b = tl.load(B + rows[:, None] * 16 + rows[None, :])
    tl.store(OUT + rows[:, None] * 16 + rows[None, :], _dot(a, b, tl.float32, DOT_ALGO))


def _significant_bits(values: np.ndarray) -> int:
    """The most significand bits any nonzero float32 in ``values`` uses (1 + the mantissa bits up to the last 1)."""
    bits = values.astype(np.float32).view(np.uint32) & 0x7FFFFF
    trailing = np.array([(int(b) & -int(b)).bit_length() - 1 if b else 23 for b in bits])
    return int((1 + 23 - trailing)[values != 0].max()) if (values != 0).any() else 0


def test_split_halves_are_tf32_and_sum_to_x():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, generator=generator) * torch.logspace(-20, 20, 4096)
    x[:4] = torch.tensor([0.0, -0.0, 1.0, float.fromhex("0x1.fffffep-1")])  # zero, and a carry into the exponent
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _split_kernel[(1,)](x, hi, lo, N=4096)
    assert _significant_bits(hi.numpy()) <= 11 and _significant_bits(lo.numpy()) <= 11
    residual = (x.double() - hi.double() - lo.double()).abs()
    assert (residual <= 2.0**-23 * x.double().abs()).all(), (residual / x.double().abs()).nan_to_num().max().item()
    assert (lo.double().abs() <= 2.0**-11 * x.double().abs()).all()
    assert hi[3].item() == 1.0 and hi[2].item() == 1.0 and lo[2].item() == 0.0


def test_split_keeps_non_finite():
    x = torch.tensor([float("inf"), -float("inf"), float("nan")] + [0.0] * 13)
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _split_kernel[(1,)](x, hi, lo, N=16)
    assert hi[0].item() == float("inf") and hi[1].item() == -float("inf") and torch.isnan(hi[2])


@pytest.mark.parametrize("algo", [0, 1])
def test_dot_close_to_float64(algo):
    """IEEE (0) and the split (1): within a few float32 roundings of the float64 product, at logit-like sizes."""
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(16, 16, generator=generator) * 20
    b = torch.randn(16, 16, generator=generator) * 20
    out = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, out, DOT_ALGO=algo)
    exact = a.double() @ b.double()
    scale = (a.double().abs() @ b.double().abs())  # the sum of |terms|: the scale of float32 rounding
    error = ((out.double() - exact).abs() / scale).max().item()
    assert error <= 8 * 2.0**-24, error
