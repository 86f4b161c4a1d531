"""Draw time and peak memory against feature resolution, one line per provider, from ``results.csv``.

Usage: ``python -m bench.plot bench/results/<device>/results.csv`` (``pytest bench/`` calls it after every run).
One PNG per (kernel, mode, channels, batch, dtype): ``<kernel>_<mode>_C<channels>_B<batch>_<dtype>.png``, time
(median with p20-p80 band) on the left, memory on the right, both on log scales; cases that did not fit the
memory budget are marked with an x at the top of the memory panel.
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict

STYLE = {"original": "tab:red", "dense": "tab:orange", "dense-compiled": "tab:brown", "sdpa": "tab:purple",
         "keops": "tab:blue", "dve_kernels": "tab:green"}


def load(path: str) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def plot_results(csv_path: str, out_dir: str) -> list[str]:
    """Write the plots for every group of rows with at least two resolutions; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for row in load(csv_path):
        key = (row["kernel_name"], row["kernel_operation_mode"], row["channels"], row["batch"], row["dtype"],
               row["device"])
        groups[key].append(row)
    written = []
    for (kernel, mode, channels, batch, dtype, device), rows in sorted(groups.items()):
        if len({r["x_value"] for r in rows}) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, metric, label in ((axes[0], "time", "time (ms, median; p20-p80)"),
                                  (axes[1], "memory", "peak memory (MiB)")):
            for provider, colour in STYLE.items():
                ok = sorted(((int(r["x_value"]), float(r["y_value_50"]), float(r["y_value_20"]),
                              float(r["y_value_80"])) for r in rows
                             if r["kernel_provider"] == provider and r["metric_name"] == metric
                             and r["status"] == "ok"))
                if ok:
                    xs = [x for x, *_ in ok]
                    ax.plot(xs, [m for _, m, _, _ in ok], "o-", color=colour, label=provider)
                    ax.fill_between(xs, [lo for *_, lo, _ in ok], [hi for *_, hi in ok], color=colour, alpha=0.2)
                oom = sorted({int(r["x_value"]) for r in rows if r["kernel_provider"] == provider
                              and r["metric_name"] == metric and r["status"] == "oom"})
                if oom:
                    ax.plot(oom, [1.0] * len(oom), "x", color=colour, transform=ax.get_xaxis_transform(),
                            clip_on=False, markersize=9, label=f"{provider}: out of memory")
            ax.set_xlabel("feature map side (N = M = side²)")
            ax.set_ylabel(label)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{kernel}, {mode}: C = {channels}, B = {batch}, {dtype}, on {device}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"{kernel}_{mode}_C{channels}_B{batch}_{dtype}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.plot bench/results/<device>/results.csv")
    for written_path in plot_results(sys.argv[1], os.path.dirname(os.path.abspath(sys.argv[1]))):
        print(written_path)
