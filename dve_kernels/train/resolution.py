"""What resolution buys: DVE on the built-in faces at the ``table1`` preset's resolution (56-px renders cropped to
40 px, 20x20 maps) and at twice it (``table1-2x``: 112 -> 80 px, 40x40 maps), on the same identities, poses, warps,
epochs and steps; SmallNet as it is (``smallnet``) and with every dilation doubled (``smallnet-d2``: its receptive
field covers the same fraction of the face at 2x as SmallNet's at 1x), each network at both resolutions.

Every run trains in ``<runs>/<resolution>-<model>[-<variant>]-seed<s>`` in a fresh process with one thread (its
peak RSS is measured there), ``--jobs`` at a time; finished runs are kept and an interrupted one continues from its
checkpoint. ``--ablation`` adds variants (one knob each, tried at both resolutions, by default on SmallNet at 1x
and the dilated SmallNet at 2x). Writes
``resolution.csv``, ``resolution.md`` and ``resolution.png`` (and ``resolution_ablation.png``) to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from .checkpoint import CHECKPOINT_NAME
from .config import PRESETS, TrainConfig
from .data import config_dataset
from .evaluate import evaluate_run
from .figures import _pyplot
from .loop import Trainer
from .memory_report import step_peak_bytes
from .models import build_model
from .table1 import cpu_name, run_parallel

__all__ = ["RESOLUTIONS", "MODELS", "SETTINGS", "ABLATIONS", "COLUMNS", "run_config", "run_grid", "summarise",
           "receptive_field", "mean_iod", "peak_rss_gib", "main"]

#: Resolution -> preset: the same faces rendered at 56 and at 112 pixels.
RESOLUTIONS = {"1x": "table1", "2x": "table1-2x"}
#: Network -> SmallNet's ``model_dilation``.
MODELS = {"smallnet": 1, "smallnet-d2": 2}
#: The compared (resolution, network) settings, in the tables' order.
SETTINGS = (("1x", "smallnet"), ("2x", "smallnet"), ("2x", "smallnet-d2"), ("1x", "smallnet-d2"))
#: One-knob variants for ``--ablation``: name -> (what it changes, the config changes given the run's settings).
ABLATIONS = {
    "lr1e-3": ("learning rate 1e-3 (not 3e-3)", lambda c: dict(lr=1e-3)),
    "lr1e-2": ("learning rate 1e-2 (not 3e-3)", lambda c: dict(lr=1e-2)),
    "long": ("twice the epochs and steps", lambda c: dict(epochs=2 * c["epochs"],
                                                          max_steps=c["max_steps"] and 2 * c["max_steps"])),
    "short": ("half the epochs and steps", lambda c: dict(epochs=max(1, c["epochs"] // 2),
                                                          max_steps=c["max_steps"] and max(1, c["max_steps"] // 2))),
    "c16": ("16-D embeddings (not 64)", lambda c: dict(embedding_dim=16)),
    "detail-half": ("faces rendered at half the width and resized up: the detail of the resolution below",
                    lambda c: dict(face_detail=0.5)),
}
COLUMNS = ("resolution", "model", "variant", "seed", "input_px", "map_px", "receptive_field_px",
           "landmark_error_iod", "same_identity_error_rel", "different_identity_error_rel", "same_identity_error_px",
           "different_identity_error_px", "peak_rss_gib", "peak_rss_eval_gib", "dense_step_gib", "fused_step_gib",
           "steps", "s_per_step", "minutes", "resumed")
METRICS = ("landmark_error_iod", "same_identity_error_rel", "different_identity_error_rel")
RUN_RECORD = "resolution.json"  # written last: its presence marks a finished run


def run_config(resolution: str, model: str, seed: int, variant: str = "", epochs: Optional[int] = None,
               steps: Optional[int] = None, data_root: Optional[str] = None) -> dict:
    """The settings of one run: the resolution's preset, the network, DVE on, 64-D, faces of data seed 0."""
    values = dict(PRESETS[RESOLUTIONS[resolution]], model_dilation=MODELS[model], seed=seed, data_seed=0, dve=True,
                  embedding_dim=64, max_steps=steps, data_root=data_root)
    if epochs is not None:
        values["epochs"] = epochs
    if variant:
        values.update(ABLATIONS[variant][1](values))
    return values


def _run_dir(runs: Path, resolution: str, model: str, variant: str, seed: int) -> Path:
    return runs / f"{resolution}-{model}{'-' + variant if variant else ''}-seed{seed}"


def peak_rss_gib() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _run_one(values: dict, run_dir: Path, progress: bool) -> float:
    """Train and evaluate one run in this (fresh) process, one thread; continue its checkpoint if there is one."""
    torch.set_num_threads(1)
    started = time.time()
    config = TrainConfig.from_dict(values)
    resume = "auto" if (run_dir / CHECKPOINT_NAME).is_file() else None
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    first_step = trainer.global_step
    summary = trainer.run()
    train_rss, train_seconds = peak_rss_gib(), time.time() - started
    evaluate_run(trainer.model, config, run_dir, figures=False, progress=progress)
    seconds = time.time() - started
    record = dict(minutes=seconds / 60, train_minutes=train_seconds / 60, steps=trainer.global_step,
                  s_per_step=summary["seconds"] / max(1, trainer.global_step - first_step),
                  peak_rss_gib=train_rss, peak_rss_eval_gib=peak_rss_gib(), resumed=resume is not None)
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return seconds


def receptive_field(values: dict) -> int:
    """The network's receptive field in input pixels, measured: the extent of the input pixels on which one output
    pixel's gradient is non-zero (random weights and input, batch norm in eval mode)."""
    torch.manual_seed(0)
    model = build_model(TrainConfig.from_dict(values)).eval()
    size = 64 * values.get("model_dilation", 1) + 96
    images = torch.randn(1, 3, size, size, requires_grad=True)
    out = model(images)
    out[0, :, out.shape[-2] // 2, out.shape[-1] // 2].sum().backward()
    seen = images.grad[0].abs().sum(0).sum(0).nonzero().flatten()
    return int(seen.max() - seen.min() + 1)


def mean_iod(resolution: str, runs: Path) -> float:
    """The test faces' mean inter-ocular distance in pixels at ``resolution`` (faces cached in ``runs/data``)."""
    config = TrainConfig.from_dict(run_config(resolution, "smallnet", 0, data_root=str(runs / "data")))
    keypoints = torch.as_tensor(config_dataset(config, runs, "test", config.test_count).keypoints)
    return float((keypoints[:, 0] - keypoints[:, 1]).norm(dim=-1).mean())


def _step_gib(values: dict, formulation: str) -> Optional[float]:
    try:
        return step_peak_bytes(TrainConfig.from_dict(values), formulation)["peak_bytes"] / 2 ** 30
    except Exception:  # e.g. the fused backend is not built here
        return None


def _collect(keys: Sequence[Tuple[str, str, str, int]], runs: Path, out: Path, settings: Dict[tuple, dict]) -> list:
    """The finished runs' rows, also written to ``out/resolution.csv``; ``settings`` caches the per-(resolution,
    network, variant) numbers that do not depend on the run (receptive field, one step's memory)."""
    rows = []
    for resolution, model, variant, seed in keys:
        run_dir = _run_dir(runs, resolution, model, variant, seed)
        if not (run_dir / RUN_RECORD).is_file():
            continue
        metrics = json.loads((run_dir / "metrics.json").read_text())
        record = json.loads((run_dir / RUN_RECORD).read_text())
        values = run_config(resolution, model, seed, variant)
        width = TrainConfig.from_dict(values).input_size
        if (resolution, model, variant) not in settings:
            settings[resolution, model, variant] = dict(
                receptive_field_px=receptive_field(values), dense_step_gib=_step_gib(values, "dense"),
                fused_step_gib=_step_gib(values, "fused"))
        rows.append(dict(
            resolution=resolution, model=model, variant=variant or "-", seed=seed, input_px=width, map_px=width // 2,
            landmark_error_iod=metrics["landmark_error_iod"],
            same_identity_error_rel=metrics["same_identity_error"] / width,
            different_identity_error_rel=metrics["different_identity_error"] / width,
            same_identity_error_px=metrics["same_identity_error"],
            different_identity_error_px=metrics["different_identity_error"],
            **settings[resolution, model, variant], **{k: record[k] for k in ("peak_rss_gib", "peak_rss_eval_gib",
                                                                              "steps", "s_per_step", "minutes")},
            resumed=int(record["resumed"])))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "resolution.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows])
    return rows


def _cost(values: dict) -> float:
    """A run's relative cost: map pixels (the network's and the loss's work grow at least with them) times steps."""
    config = TrainConfig.from_dict(values)
    return config.input_size ** 2 * min(config.epochs * (config.train_count // config.batch_size),
                                        config.max_steps or float("inf"))


def run_grid(keys: Sequence[Tuple[str, str, str, int]], runs: Path, out: Path, epochs: Optional[int] = None,
             steps: Optional[int] = None, jobs: int = 1, progress: bool = False) -> list:
    """Train and evaluate every ``(resolution, model, variant, seed)`` not yet finished, ``jobs`` at a time (the
    settings, then each variant, the longest first); rewrites ``resolution.csv`` after each run; its rows."""
    data_root = str(runs / "data")
    todo = [key for key in keys if not (_run_dir(runs, *key) / RUN_RECORD).is_file()]
    for resolution in sorted({key[0] for key in todo}):  # render (and cache) the faces once, not in every run
        config = TrainConfig.from_dict(run_config(resolution, "smallnet", 0, data_root=data_root))
        for split, count in (("train", config.train_count), ("test", config.test_count)):
            config_dataset(config, runs, split, count)
    # the compared settings first, then each variant in the order given; the longest first within each
    order = list(dict.fromkeys(key[2] for key in keys))
    todo.sort(key=lambda key: (order.index(key[2]), -_cost(run_config(*key[:2], key[3], key[2], epochs, steps))))
    settings: Dict[tuple, dict] = {}
    tasks = {_run_dir(runs, *key).name: (run_config(*key[:2], key[3], key[2], epochs, steps, data_root),
                                         _run_dir(runs, *key), progress and jobs == 1) for key in todo}
    run_parallel(_run_one, tasks, jobs, on_done=lambda: _collect(keys, runs, out, settings))
    return _collect(keys, runs, out, settings)  # written even when every run was finished before


def summarise(rows: list) -> dict:
    """``{(resolution, model, variant): {column: (mean, std, n)}}`` over seeds (std with ``ddof = 1``; 0 for one
    run), for the metrics and the per-run costs."""
    table = {}
    for key in dict.fromkeys((r["resolution"], r["model"], r["variant"]) for r in rows):
        chosen = [r for r in rows if (r["resolution"], r["model"], r["variant"]) == key]
        columns = METRICS + ("same_identity_error_px", "different_identity_error_px", "peak_rss_gib",
                             "peak_rss_eval_gib", "minutes", "s_per_step")
        table[key] = {c: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                      for c in columns for v in [[float(r[c]) for r in chosen]]}
        table[key].update({c: chosen[0][c] for c in ("input_px", "map_px", "receptive_field_px", "dense_step_gib",
                                                     "fused_step_gib", "steps")})
    return table


def _ms(stats, scale: float = 1.0, digits: int = 2) -> str:
    return f"{stats[0] * scale:.{digits}f} ± {stats[1] * scale:.{digits}f}"


def _gib(value) -> str:
    return "-" if value is None or value == "" else f"{float(value):.2f}"


def _label(key) -> str:
    resolution, model, variant = key
    return f"{resolution} {model}" + ("" if variant == "-" else f" ({variant})")


def _table_lines(table: dict, iods: dict) -> list:
    lines = ["| setting | maps | receptive field, px (IODs) | runs | landmarks (% IOD) | same identity (% width) | "
             "different identity (% width) | same / different (px) | peak RSS, training (GiB) | dense step (GiB) | "
             "fused step (GiB) | s/step | min/run |", "|" + "---|" * 13]
    for key, s in table.items():
        field = f"{s['receptive_field_px']} ({s['receptive_field_px'] / iods[key[0]]:.1f})"
        lines.append(f"| {_label(key)} | {s['map_px']}² | {field} | {s[METRICS[0]][2]} | "
                     f"{_ms(s[METRICS[0]])} | {_ms(s[METRICS[1]], 100)} | {_ms(s[METRICS[2]], 100)} | "
                     f"{s['same_identity_error_px'][0]:.2f} / {s['different_identity_error_px'][0]:.2f} | "
                     f"{s['peak_rss_gib'][0]:.2f} | {_gib(s['dense_step_gib'])} | {_gib(s['fused_step_gib'])} | "
                     f"{s['s_per_step'][0]:.2f} | {s['minutes'][0]:.1f} |")
    return lines


def _change(table: dict, a, b, metric: str) -> str:
    return f"{table[b][metric][0] / table[a][metric][0] - 1:+.0%}"


NOTES_MARKER = "<!-- Written by hand below this line; kept when the runner rewrites the file. -->"


def _markdown(table: dict, ablation: dict, iods: dict, command: str, base: dict, seconds: float, jobs: int,
              notes: str = "") -> str:
    """``table``: the settings over every seed; ``ablation``: the variants and their settings' own seeds;
    ``iods``: the test faces' mean inter-ocular distance (pixels) per resolution."""
    widths = {r: TrainConfig.from_dict(PRESETS[p]).input_size for r, p in RESOLUTIONS.items()}
    main = {k: v for k, v in table.items() if k[2] == "-"}
    lines = ["# What resolution buys: DVE at the table1 resolution and at twice it", "",
             f"Command: `{command}`  ", f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"one thread per run, {jobs} run(s) at a time, each in its own process; wall time of this invocation "
             f"{seconds / 60:.1f} min.  ",
             "Settings (1x, the table1 preset): " + ", ".join(f"{k}={v}" for k, v in sorted(base.items())
                                                             if k not in ("seed", "model_dilation")) + ".  ",
             f"2x (the table1-2x preset): imwidth={PRESETS['table1-2x']['imwidth']}, "
             f"crop={PRESETS['table1-2x']['crop']}, everything else the same. smallnet-d2: model_dilation=2 "
             "(every SmallNet dilation doubled: the same weights and cost per pixel). "
             "Errors: landmarks in % of the inter-ocular distance (regressor on frozen embeddings); matching errors "
             f"in % of the input width ({widths['1x']} px at 1x, {widths['2x']} px at 2x) and in pixels. Receptive "
             "field: measured (the input pixels one output pixel's gradient reaches), also in units of the test "
             "faces' mean inter-ocular distance (" + ", ".join(f"{iods[r]:.1f} px at {r}" for r in sorted(iods))
             + "). Peak RSS: the run's process after training (ru_maxrss); dense / fused step: one training step's "
             "peak tensor memory (memory_report). Mean ± standard deviation over seeds.", ""]
    if main:
        lines += ["## The comparison", ""] + _table_lines(main, iods)
        one, two, fair = ("1x", "smallnet", "-"), ("2x", "smallnet", "-"), ("2x", "smallnet-d2", "-")
        for other in (two, fair):
            if one in main and other in main:
                lines += ["", f"{_label(other)} against {_label(one)}: landmarks "
                              f"{_change(main, one, other, METRICS[0])}, same identity "
                              f"{_change(main, one, other, METRICS[1])}, different identity "
                              f"{_change(main, one, other, METRICS[2])} (relative errors; negative = better)."]
    if any(k[2] != "-" for k in ablation):
        lines += ["", "## Ablation (one knob each, at both resolutions)", "",
                  "Each setting without a variant, then its variants, on the same seeds: " + "; ".join(
                      f"{name}: {ABLATIONS[name][0]}" for name in dict.fromkeys(k[2] for k in ablation if k[2] != "-"))
                  + ".", ""]
        lines += _table_lines(ablation, iods)
    return "\n".join(lines) + "\n\n" + NOTES_MARKER + "\n" + notes


def _figure(rows: list, table: dict, path: Path, caption: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    keys = list(table)
    colours = ["tab:blue" if k[0] == "1x" else "tab:orange" for k in keys]
    hatches = ["" if k[1] == "smallnet" else "//" for k in keys]
    titles = ("landmark error", "same-identity matching error", "different-identity matching error")
    for ax, metric, title, unit, scale in zip(axes, METRICS, titles, ("% inter-ocular distance", "% input width",
                                                                       "% input width"), (1, 100, 100)):
        bars = ax.bar(range(len(keys)), [table[k][metric][0] * scale for k in keys], color=colours, alpha=0.55,
                      yerr=[table[k][metric][1] * scale for k in keys], capsize=4)
        for bar, hatch in zip(bars, hatches):
            bar.set_hatch(hatch)
        for i, key in enumerate(keys):
            values = [float(r[metric]) * scale for r in rows if (r["resolution"], r["model"], r["variant"]) == key]
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(keys)), [_label(k).replace(" ", "\n") for k in keys], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(unit)
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.01, 0.01, caption, fontsize=8, wrap=True)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


CAPTION = ("DVE, 64-D, on the built-in faces at the table1 resolution (1x: 40-px input, 20x20 maps, blue) and at twice "
           "it (2x: 80 px, 40x40 maps, orange); hatched: SmallNet with doubled dilations (receptive field 106 px, not "
           "54). Bars: mean over seeds, error bars one standard deviation; black dots: the single runs. Matching "
           "errors divided by the input width, so 1x and 2x compare. Lower is better.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.resolution", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=[f"{r}:{m}" for r, m in SETTINGS],
                        help="resolution:network pairs, each optionally :seed,seed,... to use other seeds than "
                             "--seeds (default: " + " ".join(f"{r}:{m}" for r, m in SETTINGS) + ")")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="epochs per run, the same at both resolutions (default: the "
                                                   "presets' 6; the learning-rate drop stays at 80%% of them)")
    parser.add_argument("--steps", type=int, help="stop every run after this many steps (for smoke tests)")
    parser.add_argument("--ablation", nargs="*", default=[], choices=sorted(ABLATIONS),
                        help="one-knob variants, each run for every --ablation-settings at --ablation-seeds")
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--ablation-settings", nargs="+", default=["1x:smallnet", "2x:smallnet-d2"],
                        help="the settings the variants are run for (default 1x:smallnet 2x:smallnet-d2)")
    parser.add_argument("--runs", default="runs/resolution", help="where the runs go (default runs/resolution)")
    parser.add_argument("--out", default="bench/results/training", help="where the table and figures go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one thread each (default 1)")
    args = parser.parse_args(argv)
    settings = [tuple(s.split(":")[:2]) for s in args.settings]
    seeds = {tuple(s.split(":")[:2]): [int(v) for v in s.split(":")[2].split(",")] if s.count(":") > 1
             else args.seeds for s in args.settings}
    ablation_settings = [tuple(s.split(":", 1)) for s in args.ablation_settings]
    for resolution, model in settings + ablation_settings:
        if resolution not in RESOLUTIONS or model not in MODELS:
            parser.error(f"unknown setting {resolution}:{model} (resolutions {sorted(RESOLUTIONS)}, networks "
                         f"{sorted(MODELS)})")
    torch.set_num_threads(1)
    started, out, runs = time.time(), Path(args.out), Path(args.runs)
    keys = [(r, m, "", s) for r, m in settings for s in seeds[r, m]]
    keys += [(r, m, v, s) for v in args.ablation for r, m in ablation_settings for s in args.ablation_seeds]
    rows = run_grid(keys, runs, out, epochs=args.epochs, steps=args.steps, jobs=args.jobs,
                    progress=sys.stderr.isatty())
    if not rows:
        print("no finished runs", file=sys.stderr)
        return 1
    table = summarise(rows)
    chosen = {(r, m, v) for r, m in ablation_settings for v in ["-"] + args.ablation}
    ablation_rows = [r for r in rows if (r["resolution"], r["model"], r["variant"]) in chosen
                     and r["seed"] in args.ablation_seeds] if args.ablation else []
    ablation_rows.sort(key=lambda r: (ablation_settings.index((r["resolution"], r["model"])),
                                      (["-"] + args.ablation).index(r["variant"])))
    ablation = summarise(ablation_rows)
    command = "python -m dve_kernels.train.resolution " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    path = out / "resolution.md"
    previous = path.read_text() if path.is_file() else ""
    notes = previous.split(NOTES_MARKER + "\n", 1)[1] if NOTES_MARKER + "\n" in previous else ""
    base = run_config("1x", "smallnet", 0, epochs=args.epochs, steps=args.steps, data_root=str(runs / "data"))
    iods = {r: mean_iod(r, runs) for r in sorted({row["resolution"] for row in rows})}
    path.write_text(_markdown(table, ablation, iods, command.strip(), base, time.time() - started, args.jobs,
                              notes))
    main_rows = [r for r in rows if r["variant"] == "-"]
    if main_rows:
        shown = {k: v for k, v in table.items() if k[2] == "-"}
        runs_per_bar = ", ".join(f"{_label(k)} {v[METRICS[0]][2]}" for k, v in shown.items())
        steps_per_run = "/".join(str(s) for s in dict.fromkeys(v["steps"] for v in shown.values()))
        _figure(main_rows, shown, out / "resolution.png",
                f"{CAPTION} Runs per bar: {runs_per_bar}; {steps_per_run} steps each.")
    if any(r["variant"] != "-" for r in ablation_rows):
        _figure(ablation_rows, ablation, out / "resolution_ablation.png",
                "One knob at a time (" + "; ".join(f"{n}: {ABLATIONS[n][0]}" for n in args.ablation) + "), seed(s) "
                + ", ".join(map(str, args.ablation_seeds)) + ". " + CAPTION.split(". ", 1)[1])
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
