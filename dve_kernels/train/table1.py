"""The paper's Table 1 on the built-in data: SmallNet at C = 3 without DVE and C = 16, 64 with and without DVE.

Every run trains a preset (``table1``) in ``<runs>/C<c>-dve<0|1>-seed<s>``, ``--jobs`` of them at a time (one
thread each); finished runs are kept, so an interrupted table continues where it stopped. Writes ``table1.csv``,
``table1.md``, ``table1.png`` and ``table1_matches.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional, Sequence

import torch

from .checkpoint import CHECKPOINT_NAME, load_run
from .config import PRESETS, TrainConfig
from .data import config_dataset
from .evaluate import evaluate_run
from .figures import _pyplot, draw_comparison
from .loop import Trainer

__all__ = ["CONFIGURATIONS", "COLUMNS", "run_table", "run_parallel", "summarise", "cpu_name", "main"]

#: (embedding_dim, dve) of the paper's Table 1 rows.
CONFIGURATIONS = ((3, False), (16, False), (16, True), (64, False), (64, True))
COLUMNS = ("embedding_dim", "dve", "seed", "same_identity_error", "different_identity_error", "landmark_error_iod")
METRICS = COLUMNS[3:]


def _run_one(base: dict, dim: int, dve: bool, seed: int, run_dir: Path, progress: bool) -> float:
    """Train and evaluate one run (one thread; continuing its checkpoint if a table was interrupted)."""
    torch.set_num_threads(1)
    started = time.time()
    config = TrainConfig.from_dict(dict(base, embedding_dim=dim, dve=dve, seed=seed))
    resume = "auto" if (run_dir / CHECKPOINT_NAME).is_file() else None
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    trainer.run()
    evaluate_run(trainer.model, config, run_dir, figures=False, progress=progress)
    return time.time() - started


def _run_dir(runs: Path, dim: int, dve: bool, seed: int) -> Path:
    return runs / f"C{dim}-dve{int(dve)}-seed{seed}"


def _collect(runs: Path, seeds: Sequence[int], out: Path) -> list:
    """The finished runs' rows, also written to ``out/table1.csv``."""
    rows = []
    for dim, dve in CONFIGURATIONS:
        for seed in sorted(seeds):
            path = _run_dir(runs, dim, dve, seed) / "metrics.json"
            if path.is_file():
                metrics = json.loads(path.read_text())
                rows.append(dict(embedding_dim=dim, dve=int(dve), seed=seed, **{k: metrics[k] for k in METRICS}))
    with open(out / "table1.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def run_table(base: dict, seeds: Sequence[int], runs: Path, out: Path, progress: bool = False, jobs: int = 1) -> list:
    """Train and evaluate every configuration and seed not yet finished, ``jobs`` runs at a time (a process and a
    thread each; progress bars only for ``jobs = 1``); rewrites ``table1.csv`` after each run."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [(dim, dve, seed) for seed in seeds for dim, dve in CONFIGURATIONS
            if not (_run_dir(runs, dim, dve, seed) / "metrics.json").is_file()]
    config = TrainConfig.from_dict(base)
    if todo and config.dataset == "synthetic":  # render (and cache) the faces once, not in every run
        for split, count in (("train", config.train_count), ("test", config.test_count)):
            config_dataset(config, runs, split, count)
    tasks = {_run_dir(runs, *key).name: (base, *key, _run_dir(runs, *key), progress and jobs == 1) for key in todo}
    run_parallel(_run_one, tasks, jobs, on_done=lambda: _collect(runs, seeds, out))  # interrupted: kept what it did
    return _collect(runs, seeds, out)  # written even when every run was finished before


def run_parallel(worker, tasks: dict, jobs: int = 1, on_done=None) -> None:
    """``worker(*args)`` for every ``name: args`` of ``tasks``, ``jobs`` at a time, each in a fresh spawned process
    (one run per process, so its peak RSS is its own); ``worker`` returns its seconds, printed with the name, and
    ``on_done()`` is called in this process after each."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, min(jobs, len(tasks))), mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(worker, *args): name for name, args in tasks.items()}
        for done, future in enumerate(as_completed(futures), 1):
            seconds = future.result()
            print(f"[{done}/{len(tasks)}] {futures[future]}: {seconds:.0f} s", file=sys.stderr, flush=True)
            if on_done is not None:
                on_done()


def summarise(rows: list) -> dict:
    """``{(dim, dve): {metric: (mean, std, n)}}`` (std with ``ddof = 1``; 0 for one run)."""
    table = {}
    for dim, dve in CONFIGURATIONS:
        chosen = [r for r in rows if r["embedding_dim"] == dim and r["dve"] == int(dve)]
        if chosen:
            columns = {m: [r[m] for r in chosen] for m in METRICS}
            table[dim, dve] = {m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                               for m, v in columns.items()}
    return table


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def _markdown(table: dict, command: str, base: dict, seconds: float, jobs: int = 1) -> str:
    lines = ["# Table 1 on the built-in synthetic faces", "",
             f"Command: `{command}`  ", f"Machine: {cpu_name()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, one thread per run, {jobs} run(s) at a time; "
             f"wall time {seconds / 60:.1f} min.  ",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in sorted(base.items())
                                     if k not in ("embedding_dim", "dve", "seed")), "",
             "| C | DVE | runs | same identity (px) | different identity (px) | landmarks (% IOD) |",
             "|---|---|---|---|---|---|"]
    for (dim, dve), stats in table.items():
        cells = [f"{stats[m][0]:.2f} ± {stats[m][1]:.2f}" for m in METRICS]
        lines.append(f"| {dim} | {'yes' if dve else 'no'} | {stats[METRICS[0]][2]} | " + " | ".join(cells) + " |")
    if (64, False) in table and (64, True) in table:
        same, diff = (table[64, True][m][0] / table[64, False][m][0] - 1 for m in METRICS[:2])
        lines += ["", f"64-D, DVE against no DVE: different identity {diff:+.0%}, same identity {same:+.0%} "
                      "(the paper, Table 1: -51% and +2%)."]
    return "\n".join(lines) + "\n"


def _figure(rows: list, table: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    labels = [f"{dim}-D\n{'DVE' if dve else 'no DVE'}" for dim, dve in table]
    colours = ["tab:orange" if dve else "tab:blue" for _, dve in table]
    for ax, metric, unit in zip(axes, METRICS, ("pixels", "pixels", "% inter-ocular distance")):
        ax.bar(range(len(labels)), [stats[metric][0] for stats in table.values()], color=colours, alpha=0.6,
               capsize=4, yerr=[stats[metric][1] for stats in table.values()])
        for i, (dim, dve) in enumerate(table):
            values = [r[metric] for r in rows if r["embedding_dim"] == dim and r["dve"] == int(dve)]
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(metric.replace("_", " "), fontsize=9)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, "Bars: mean over seeds, error bars one standard deviation; black dots: the single runs. "
                         "Blue: the plain warp loss (eq. 3); orange: DVE (eq. 6). Lower is better.", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.table1", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="table1", help="default table1")
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default: the preset's epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", default="runs/table1", help="where the runs go (default runs/table1)")
    parser.add_argument("--out", default="bench/results/training", help="where the table and figures go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started, out, runs = time.time(), Path(args.out), Path(args.runs)
    base = dict(PRESETS[args.preset], max_steps=args.steps, data_seed=0, data_root=str(runs / "data"))
    rows = run_table(base, args.seeds, runs, out, progress=sys.stderr.isatty(), jobs=args.jobs)
    table = summarise(rows)
    command = "python -m dve_kernels.train.table1 " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    (out / "table1.md").write_text(_markdown(table, command.strip(), base, time.time() - started, args.jobs))
    _figure(rows, table, out / "table1.png")
    pair = [load_run(_run_dir(runs, 64, dve, args.seeds[0])) for dve in (False, True)]
    draw_comparison([(f"64-D {'with' if c.dve else 'without'} DVE", m, c) for c, m, _ in pair],
                    out / "table1_matches.png")
    print((out / "table1.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
