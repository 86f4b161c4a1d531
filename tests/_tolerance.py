"""The one tolerance rule of SPEC.md section 4, shared by every test that compares a backend with float64.

- float32: each result is no further from the float64 reference than twice the dense float32 computation's own
  error, or ``FLOAT32_FLOOR`` of the reference's max-norm, whichever is larger.
- bfloat16 / float16 storage: at most twice the dense computation's error in the same dtype, with a floor of a
  quarter of the dtype's epsilon of the max-norm (the dense error can be zero by luck: one-hot rows, C = 1).
- float64: within ``FLOAT64_RELATIVE`` of the reference's max-norm (or of 1).

:func:`ratio` is the error-to-tolerance ratio (<= 1 passes); the seed sweeps report its worst value.
"""

from __future__ import annotations

import torch

FLOAT32_FLOOR = 1e-5
FLOAT64_RELATIVE = 1e-10
#: With a problem ``scale`` (the magnitude a result would have without cancellation, e.g. loss / max|input| for a
#: gradient): a result that vanishes in exact arithmetic (C = 1 with normalised vectors, one-hot rows) is compared
#: at about the dtype's resolution of that scale.
SCALE_FLOOR = {torch.float64: 1e-14, torch.float32: 1e-8, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """Max-norm distance, in float64; NaN where either side is non-finite somewhere."""
    return (value.double() - exact.double()).abs().max().item() if exact.numel() else 0.0


def max_norm(x: torch.Tensor) -> float:
    return x.double().abs().max().item() if x.numel() else 0.0


def tolerance(exact: torch.Tensor, dense: torch.Tensor | None, dtype: torch.dtype, scale: float = 0.0) -> float:
    """The allowed max-norm error for a result of ``dtype`` whose float64 value is ``exact`` and whose dense
    computation in the same dtype gave ``dense``. ``scale``: see SCALE_FLOOR."""
    if dtype == torch.float64:
        return max(FLOAT64_RELATIVE * max(max_norm(exact), 1.0), SCALE_FLOOR[dtype] * scale)
    floor = FLOAT32_FLOOR if dtype == torch.float32 else torch.finfo(dtype).eps / 4
    dense_error = 0.0 if dense is None else error(dense, exact)
    return max(2 * dense_error, floor * max_norm(exact), SCALE_FLOOR[dtype] * scale)


def ratio(value: torch.Tensor, exact: torch.Tensor, dense: torch.Tensor | None, dtype: torch.dtype,
          scale: float = 0.0) -> float:
    """Error over tolerance: <= 1 keeps the promise. A zero tolerance (exact zero everywhere) needs exact zero."""
    bound = tolerance(exact, dense, dtype, scale)
    err = error(value, exact)
    if bound == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / bound


def assert_within(results, exact, dense, dtype, names, context="") -> float:
    """Assert the rule for each named result; returns the worst ratio."""
    worst = 0.0
    for name, value, e, d in zip(names, results, exact, dense if dense is not None else [None] * len(names)):
        r = ratio(value, e, d, dtype)
        assert r <= 1.0, (f"{context}{name} ({dtype}): error {error(value, e):.3g} is {r:.2f}x the tolerance "
                          f"{tolerance(e, d, dtype):.3g}")
        worst = max(worst, r)
    return worst
