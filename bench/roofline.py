"""The drop-in DVE loss on the CPU against the machine's own FMA peak, and against the dense formulation.

    python -m bench.roofline [--threads 2] [--channels 3 16 64] [--sides 35 48 64] [--out DIR]

The peak is measured here, by the C++ extension itself (``dve_kernels._C.fma_peak``: independent float32 FMA
chains on every thread, with the vector width the kernels run with). Each case times forward + backward of
``dense_correlation_loss_dve`` (float32, B = 8 pairs, num_aux = 1) on the ``cpu`` backend and on the dense
``reference`` backend, side by side in one process (best of ``--repeats`` after a warm-up), and prints:

- the achieved fraction of the peak, counting ``22·B·N·M·C`` FLOPs: the dense formulation's matrix products
  (exchange: 2 forward + 5 backward N x M x C products; warp loss: 1 + 3), two FLOPs each;
- the speed-up over the dense path.

Writes ``roofline.md`` and ``roofline.csv`` to ``--out`` (default: ``bench/results/local``, which git ignores; pass
``--out bench/results/<device>`` to commit a table).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import torch

import dve_kernels
from dve_kernels import _library

#: FLOPs per (u, v) pair and channel of the DVE loss, forward + backward (see the module docstring).
FLOPS_PER_PAIR_CHANNEL = 22
BATCH = 8


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def fma_peak(threads: int) -> float:
    """FLOP/s of ``threads`` threads of independent float32 FMA chains (best of three short runs)."""
    return max(_library._C.fma_peak(threads, 50_000_000) for _ in range(3))


def time_loss(side: int, channels: int, backend: str, repeats: int) -> float:
    """Seconds of one forward + backward of the DVE drop-in (float32), best of ``repeats`` after a warm-up."""
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(2 * BATCH, channels, side, side, generator=generator).requires_grad_(True)
    grid = torch.rand(BATCH, side, side, 2, generator=generator) * 2 - 1
    best = float("inf")
    for attempt in range(repeats + 1):
        feats.grad = None
        start = time.perf_counter()
        dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend=backend).backward()
        if attempt:  # the first call warms up
            best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for the peak and the losses (default 2)")
    parser.add_argument("--channels", type=int, nargs="+", default=[3, 16, 64])
    parser.add_argument("--sides", type=int, nargs="+", default=[35, 48, 64], help="feature-map sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case (best counts)")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense reference (speed-up column)")
    parser.add_argument("--out", default="bench/results/local", help="where roofline.md and .csv go")
    args = parser.parse_args(argv)
    if not _library.CPU_KERNELS:
        print(f"bench.roofline needs the C++ kernels: {_library.CPU_KERNELS_ERROR}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    peak = fma_peak(args.threads)
    machine = (f"{cpu_name()}, {os.cpu_count()} cores, kernels {_library.KERNEL_ISA}, torch {torch.__version__}, "
               f"{args.threads} thread(s)")
    print(f"{machine}\nFMA peak: {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for side in args.sides:
        for channels in args.channels:
            pairs = side ** 4
            flops = FLOPS_PER_PAIR_CHANNEL * BATCH * pairs * channels
            fused = time_loss(side, channels, "cpu", args.repeats)
            dense = None if args.no_dense else time_loss(side, channels, "reference", args.repeats)
            row = dict(side=side, channels=channels, fused_s=fused, dense_s=dense, gflops=flops / fused / 1e9,
                       peak_fraction=flops / fused / peak, speedup=None if dense is None else dense / fused)
            rows.append(row)
            print(f"{side}x{side} C={channels:3d}: fused {fused * 1e3:8.1f} ms ({row['gflops']:6.1f} GFLOP/s, "
                  f"{row['peak_fraction']:.2f} of peak)"
                  + ("" if dense is None else f", dense {dense * 1e3:8.1f} ms, {row['speedup']:.2f}x"), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "roofline.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    command = "python -m bench.roofline " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["# The drop-in DVE loss against the CPU's FMA peak", "", f"Command: `{command.strip()}`  ",
             f"Machine: {machine}; FMA peak measured {peak / 1e9:.1f} GFLOP/s (float32).  ",
             f"Case: `dense_correlation_loss_dve`, forward + backward, float32, B = {BATCH} pairs, num_aux = 1; "
             f"{FLOPS_PER_PAIR_CHANNEL}·B·N·M·C FLOPs; best of {args.repeats} after a warm-up.", "",
             "| maps | C | fused (ms) | GFLOP/s | fraction of peak | dense (ms) | fused vs dense |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        dense = "" if row["dense_s"] is None else f"{row['dense_s'] * 1e3:.1f}"
        speedup = "" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(f"| {row['side']}² | {row['channels']} | {row['fused_s'] * 1e3:.1f} | {row['gflops']:.1f} | "
                     f"{row['peak_fraction']:.2f} | {dense} | {speedup} |")
    (out / "roofline.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'roofline.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
