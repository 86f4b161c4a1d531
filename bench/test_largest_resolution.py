"""The largest square feature map each formulation can train the DVE loss at (forward + backward), B = 8, C = 64,
for a memory budget (``--bench-budget-gib``; 16 GiB on GPU, 8 GiB on CPU by default).

Peak tensor memory is found without computing: each formulation runs on the ``meta`` device under
:class:`dve_kernels.memory.AllocationRecorder` (the fused ops run their registered fake implementations, which
allocate exactly what the real kernels return). A binary search over the side gives the largest that fits.
Writes ``largest_resolution.csv`` next to the other results.
"""

import csv
import os

import torch

from dve_kernels import conventions, functional

from . import providers
from .conftest import _out_dir
from .harness import device_name, peak_memory

BATCH, CHANNELS = 8, 64


def _fused_dve(device: str):
    """The DVE loss through the device's fused backend module directly (the public API refuses meta tensors)."""
    backend = functional._load_triton() if torch.device(device).type == "cuda" else functional._load_cpu()

    def loss(feats, grid):
        src, tgt, src_xy, tgt_xy = conventions.prepare_pairs(feats, grid, True)
        rebuilt = backend.exchange(src, conventions.gather_auxiliary(src, 1), 1.0)
        tgt_xy = tgt_xy.unsqueeze(0).expand(src.shape[0], -1, -1).contiguous()
        return backend.warp_loss_rows(rebuilt, tgt, src_xy, tgt_xy, 0.5, 1.0).mean()

    return loss


def peak_bytes(provider: str, side: int, device: str) -> float:
    fn = _fused_dve(device) if provider == "dve_kernels" else providers.loss_function("dve", provider, "meta")
    inputs = providers.make_inputs("dve", side, CHANNELS, BATCH, torch.float32, "meta")
    return peak_memory(fn, inputs, "full", "meta")


def largest_side(provider: str, budget: float, device: str, limit: int = 4096) -> int:
    low, high = 0, limit  # peak(low) fits (0: nothing), peak(high + 1) does not or high is the limit
    while low < high:
        middle = (low + high + 1) // 2
        if peak_bytes(provider, middle, device) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def test_largest_trainable_resolution(bench_settings, request):
    device, budget = bench_settings.device, bench_settings.budget_bytes
    rows = []
    for provider in ("original", "dense", "dve_kernels"):
        side = largest_side(provider, budget, device)
        rows.append({"provider": provider, "largest_side": side, "N": side * side,
                     "peak_at_largest": providers.sizeof_fmt(peak_bytes(provider, side, device)) if side else "",
                     "peak_at_64": providers.sizeof_fmt(peak_bytes(provider, 64, device)),
                     "budget": providers.sizeof_fmt(budget), "batch": BATCH, "channels": CHANNELS,
                     "device": device_name(device)})
    out = _out_dir(request.config)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "largest_resolution.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['provider']:>12}: largest {row['largest_side']}x{row['largest_side']} "
              f"(peak {row['peak_at_largest']}; at 64x64: {row['peak_at_64']}) within {row['budget']}")
    sides = {row["provider"]: row["largest_side"] for row in rows}
    # The point of the project: the fused path trains at well over twice the dense side in the same memory.
    assert sides["dve_kernels"] >= 2 * sides["dense"], sides
    assert sides["dense"] >= sides["original"] > 0, sides
