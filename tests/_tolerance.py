"""The one accuracy rule of docs/contract.md section 4, shared by every test (and bench/gpu_check) that compares a
backend with float64.

Per input (:func:`tolerance`, :func:`ratio`, :func:`assert_within`):

- float32 and 16-bit: each result's max-abs error against the float64 reference is at most ``DENSE_FACTOR`` (4) times
  the dense computation's error in the same dtype, **taken as the largest over the input and NEIGHBOURS (3) of its
  one-ulp neighbours** (:func:`one_ulp_neighbour`; every error is measured against the float64 result at the input
  itself), or ``FLOAT32_FLOOR`` (1e-5) of the reference's max-norm for float32 (a quarter of the dtype's epsilon for
  16-bit), whichever is larger. Why neighbours: with x20-normalised vectors the error of any float32 pipeline is
  dominated by the conditioning, so the dense error at one input is a random draw; its neighbourhood is not.
  A caller that passes the dense error at the input alone (no neighbours) holds a backend to a tighter bound.
- float64: within ``FLOAT64_RELATIVE`` of the reference's max-norm (or of 1).

Per family (:class:`Family`): over a sweep of inputs, the median of (fused error / dense error) is at most
``MEDIAN_RATIO`` (1.5) and the worst fused error at most ``WORST_FACTOR`` (2) times the worst dense error: this
catches small systematic biases that the per-input bound lets through.

:func:`ratio` is the error-to-tolerance ratio (<= 1 passes); the seed sweeps report its worst value.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

FLOAT32_FLOOR = 1e-5
FLOAT64_RELATIVE = 1e-10
DENSE_FACTOR = 4.0
NEIGHBOURS = 3
MEDIAN_RATIO = 1.5
WORST_FACTOR = 2.0
#: With a problem ``scale`` (the magnitude a result would have without cancellation, e.g. loss / max|input| for a
#: gradient): a result that vanishes in exact arithmetic (C = 1 with normalised vectors, one-hot rows) is compared
#: at about the dtype's resolution of that scale.
SCALE_FLOOR = {torch.float64: 1e-14, torch.float32: 1e-8, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """Max-norm distance, in float64; NaN where either side is non-finite somewhere."""
    return (value.double() - exact.double()).abs().max().item() if exact.numel() else 0.0


def max_norm(x: torch.Tensor) -> float:
    return x.double().abs().max().item() if x.numel() else 0.0


def relative_error(value: torch.Tensor, exact: torch.Tensor, scale: float = 0.0) -> float:
    """:func:`error` over the reference's max-norm, or over the problem's ``scale`` where that is larger (a result
    that vanishes in exact arithmetic has no max-norm to speak of; see SCALE_FLOOR), or over 1 where both are 0."""
    norm = max(max_norm(exact), scale)
    return error(value, exact) / (norm if norm > 0 else 1.0)


def one_ulp_neighbour(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` with every value moved by one unit in the last place of ``x.dtype``, each in a random direction."""
    up = torch.rand(x.shape, generator=generator) < 0.5
    towards = torch.where(up, float("inf"), float("-inf")).to(x.dtype)
    return torch.nextafter(x, towards.to(x.device))


def neighbourhood(inputs, generator: torch.Generator, count: int = NEIGHBOURS) -> list:
    """``[inputs]`` and ``count`` one-ulp neighbours of them (a list of input lists, same dtypes)."""
    return [list(inputs)] + [[one_ulp_neighbour(x, generator) for x in inputs] for _ in range(count)]


def _dense_errors(exact: torch.Tensor, dense) -> list:
    """The dense errors against ``exact``: ``dense`` is one result, or a list of results (input and neighbours)."""
    if dense is None:
        return []
    runs = [dense] if isinstance(dense, torch.Tensor) else list(dense)
    return [error(d, exact) for d in runs]


def floor(exact: torch.Tensor, dtype: torch.dtype) -> float:
    """The smallest tolerance, in absolute units: a fraction of the reference's max-norm."""
    fraction = FLOAT32_FLOOR if dtype == torch.float32 else torch.finfo(dtype).eps / 4
    return fraction * max_norm(exact)


def tolerance(exact: torch.Tensor, dense, dtype: torch.dtype, scale: float = 0.0) -> float:
    """The allowed max-norm error for a result of ``dtype`` whose float64 value is ``exact``; ``dense`` holds the
    dense computation's results in the same dtype at the input and its neighbours (or one result, or None).
    ``scale``: see SCALE_FLOOR."""
    if dtype == torch.float64:
        return max(FLOAT64_RELATIVE * max(max_norm(exact), 1.0), SCALE_FLOOR[dtype] * scale)
    dense_error = max(_dense_errors(exact, dense), default=0.0)
    return max(DENSE_FACTOR * dense_error, floor(exact, dtype), SCALE_FLOOR[dtype] * scale)


def ratio(value: torch.Tensor, exact: torch.Tensor, dense, dtype: torch.dtype, scale: float = 0.0) -> float:
    """Error over tolerance: <= 1 keeps the promise. A zero tolerance (exact zero everywhere) needs exact zero."""
    bound = tolerance(exact, dense, dtype, scale)
    err = error(value, exact)
    if bound == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / bound


def assert_within(results, exact, dense, dtype, names, context="") -> float:
    """Assert the per-input rule for each named result; returns the worst ratio. ``dense``: per result, the dense
    result(s) as :func:`tolerance` takes them, or None."""
    worst = 0.0
    for name, value, e, d in zip(names, results, exact, dense if dense is not None else [None] * len(names)):
        r = ratio(value, e, d, dtype)
        assert r <= 1.0, (f"{context}{name} ({dtype}): error {error(value, e):.3g} is {r:.2f}x the tolerance "
                          f"{tolerance(e, d, dtype):.3g}")
        worst = max(worst, r)
    return worst


@dataclass
class Family:
    """The per-family rule over a sweep: record each input's relative errors (fused, and dense as the per-input rule
    takes it: the largest over the input and its neighbours; each the worst over the input's results), then
    :meth:`check`."""

    dtype: torch.dtype
    fused: list = field(default_factory=list)
    dense: list = field(default_factory=list)

    def add(self, fused_relative: float, dense_relative: float) -> None:
        self.fused.append(fused_relative)
        self.dense.append(dense_relative)

    def median_ratio(self) -> float:
        """The median of fused / dense error; a dense error below the dtype's epsilon counts as that epsilon (an
        exact dense result by luck is no yardstick)."""
        eps = torch.finfo(self.dtype).eps
        return statistics.median(f / max(d, eps) for f, d in zip(self.fused, self.dense)) if self.fused else 0.0

    def worst_ratio(self) -> float:
        """The worst fused error over ``WORST_FACTOR`` times the worst dense error (<= 1 passes)."""
        worst_dense = max(self.dense, default=0.0)
        worst_fused = max(self.fused, default=0.0)
        if worst_dense == 0.0:
            return 0.0 if worst_fused == 0.0 else float("inf")
        return worst_fused / (WORST_FACTOR * worst_dense)

    def check(self, context: str = "") -> dict:
        """Assert the family rule; returns its numbers."""
        summary = dict(median=self.median_ratio(), worst=self.worst_ratio(), inputs=len(self.fused))
        assert summary["median"] <= MEDIAN_RATIO, (f"{context}: median fused/dense error ratio {summary['median']:.3f} "
                                                   f"> {MEDIAN_RATIO} over {summary['inputs']} inputs")
        assert summary["worst"] <= 1.0, (f"{context}: worst fused error {max(self.fused):.3g} > {WORST_FACTOR}x the "
                                         f"worst dense error {max(self.dense):.3g}")
        return summary
