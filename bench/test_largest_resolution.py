"""Peak memory of the DVE loss (forward + backward, B = 8, C = 64, float32) and the largest square feature map each
formulation can train at for a memory budget (``--bench-budget-gib``; 16 GiB on GPU, 8 GiB on CPU by default).

Two ways of counting, because the C++ kernels allocate scratch that is not a tensor (gradient partial sums in the
backward, up to one ``(B, M, C)`` buffer at B = 8) and :class:`dve_kernels.memory.AllocationRecorder` cannot see it:

- measured, on the CPU: :func:`dve_kernels.memory.peak_rss`, the peak resident memory one forward + backward adds
  in a fresh process, everything included (``peak_rss.csv``);
- found without computing: each formulation on the ``meta`` device under the recorder (the fused ops run their
  registered fake implementations), which is exact for the dense formulations, whose memory is all tensors.

Largest side: for ``original`` and ``dense`` a binary search over the side on the ``meta`` device; for the fused
kernels on the CPU, whose memory is linear in ``N = side²`` at fixed B and C, the straight line through the peak
RSS measured at 32² and 64² (on CUDA, where ``max_memory_allocated`` sees everything, the recorder's).
Writes ``largest_resolution.csv`` and ``peak_rss.csv`` next to the other results.
"""

import csv
import os

import pytest
import torch

import dve_kernels


from dve_kernels.memory import peak_rss

from . import providers
from .conftest import _out_dir
from .harness import device_name, peak_memory

BATCH, CHANNELS = 8, 64
RSS_SIDES = (32, 64)
RSS_REPEATS = 3


def _fused_dve(device: str):
    """The DVE loss through the fused backend of ``device`` (on meta tensors its ops run their fake kernels)."""
    backend = "triton" if torch.device(device).type == "cuda" else "cpu"

    def loss(feats, grid):
        return dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend=backend)

    return loss


def recorded_bytes(provider: str, side: int, device: str) -> float:
    """Peak tensor bytes of one forward + backward, on the ``meta`` device (the recorder: no kernel scratch)."""
    fn = _fused_dve(device) if provider == "dve_kernels" else providers.loss_function("dve", provider, "meta")
    inputs = providers.make_inputs("dve", side, CHANNELS, BATCH, torch.float32, "meta")
    return peak_memory(fn, inputs, "full", "meta")


def rss_bytes(provider: str, side: int, repeats: int = RSS_REPEATS) -> int:
    """Peak resident bytes one CPU forward + backward adds, scratch included: the most of ``repeats`` fresh processes.

    With glibc's default allocator the figure varies from run to run (at 64² fused: 120 to 151 MiB in four runs;
    freed heap memory is not always returned before the next allocation), hence the maximum of several.
    """
    setup = f"""
        import torch
        from bench import providers
        fn = providers.loss_function("dve", {provider!r}, "cpu")
        warm = providers.make_inputs("dve", 8, {CHANNELS}, {BATCH}, torch.float32, "cpu", seed=1)
        torch.autograd.grad(fn(**warm), [warm["feats"]])  # thread pools, lazy initialisation
        del warm
        inputs = providers.make_inputs("dve", {side}, {CHANNELS}, {BATCH}, torch.float32, "cpu")
    """
    statement = 'grads = torch.autograd.grad(fn(**inputs), [inputs["feats"]])'
    return max(peak_rss(setup, statement)["extra"] for _ in range(repeats))


def largest_side(bytes_at, budget: float, limit: int = 4096) -> int:
    low, high = 0, limit  # peak(low) fits (0: nothing), peak(high + 1) does not or high is the limit
    while low < high:
        middle = (low + high + 1) // 2
        if bytes_at(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _write(out, name, rows):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_peak_rss_fused_against_dense(bench_settings, request):
    """At 64², B = 8, C = 64 on the CPU: measured peak RSS of the fused kernels and of the dense formulation."""
    if torch.device(bench_settings.device).type != "cpu":
        pytest.skip("peak RSS is the CPU measurement; on CUDA the benchmarks read max_memory_allocated")
    side = 64
    rows = []
    for provider in ("dense", "dve_kernels"):
        rss = rss_bytes(provider, side, repeats=1 if provider == "dense" else RSS_REPEATS)  # dense: 4.6 GiB, steady
        recorded = recorded_bytes(provider, side, "cpu")
        rows.append({"provider": provider, "side": side, "batch": BATCH, "channels": CHANNELS,
                     "peak_rss_mib": round(rss / 2**20, 1), "recorded_tensors_mib": round(recorded / 2**20, 1),
                     "device": device_name("cpu")})
        print(f"{provider:>12} at {side}x{side}: peak RSS {rss / 2**20:.1f} MiB, "
              f"recorded tensors {recorded / 2**20:.1f} MiB")
    _write(_out_dir(request.config), "peak_rss.csv", rows)
    dense, fused = (row["peak_rss_mib"] for row in rows)
    print(f"fused / dense peak RSS: 1/{dense / fused:.1f}")
    # The recorder sees the dense path whole: its memory is tensors.
    assert 0.9 <= rows[0]["peak_rss_mib"] / rows[0]["recorded_tensors_mib"] <= 1.25, rows[0]
    # The claim: the fused path needs well under a tenth of the dense memory at 64².
    assert fused * 10 < dense, rows


def test_largest_trainable_resolution(bench_settings, request):
    device, budget = bench_settings.device, bench_settings.budget_bytes
    cpu = torch.device(device).type == "cpu"
    rows = []
    for provider in ("original", "dense", "dve_kernels"):
        if provider == "dve_kernels" and cpu:
            (n0, n1), (b0, b1) = [s * s for s in RSS_SIDES], [rss_bytes(provider, s) for s in RSS_SIDES]
            slope = (b1 - b0) / (n1 - n0)
            assert slope > 0, (RSS_SIDES, b0, b1)

            def bytes_at(side, slope=slope, b0=b0, n0=n0):
                return b0 + slope * (side * side - n0)
            method = f"peak RSS, linear in N through {RSS_SIDES[0]}² and {RSS_SIDES[1]}²"
        else:
            def bytes_at(side, provider=provider):
                return recorded_bytes(provider, side, device)
            method = "tensors on the meta device"
        side = largest_side(bytes_at, budget)
        rows.append({"provider": provider, "largest_side": side, "N": side * side,
                     "peak_at_largest": providers.sizeof_fmt(bytes_at(side)) if side else "",
                     "peak_at_64": providers.sizeof_fmt(bytes_at(64)), "method": method,
                     "budget": providers.sizeof_fmt(budget), "batch": BATCH, "channels": CHANNELS,
                     "device": device_name(device)})
    _write(_out_dir(request.config), "largest_resolution.csv", rows)
    for row in rows:
        print(f"{row['provider']:>12}: largest {row['largest_side']}x{row['largest_side']} "
              f"(peak {row['peak_at_largest']}; at 64x64: {row['peak_at_64']}; {row['method']}) within {row['budget']}")
    sides = {row["provider"]: row["largest_side"] for row in rows}
    # The point of the project: the fused path trains at well over twice the dense side in the same memory.
    assert sides["dve_kernels"] >= 2 * sides["dense"], sides
    assert sides["dense"] >= sides["original"] > 0, sides
