"""Why the Table 1 preset is what it is: 64-D SmallNet with and without DVE on the demo's faces (30 marks each),
trained in stages (each stage resumes the last, bitwise what one run would do) and matched after every stage.

    python bench/training/table1_ablation.py RUNS_DIR [VARIANT ...]

Trains what RUNS_DIR lacks (one thread), then writes table1_ablation.csv, table1_ablation.md and
table1_ablation.png next to this file. Errors are the evaluation's matching errors (100 test pairs, pixels of the
40-pixel input); seed 0 only, so differences under about 0.4 px are within the noise between seeds (table1.md).
"""

import csv
import json
import sys
import time
from pathlib import Path

import torch

from dve_kernels.train.config import PRESETS, TrainConfig
from dve_kernels.train.data import config_dataset
from dve_kernels.train.evaluate import matching_errors
from dve_kernels.train.figures import _pyplot
from dve_kernels.train.loop import Trainer
from dve_kernels.train.table1 import cpu_name

HERE = Path(__file__).resolve().parents[1] / "results" / "training"  # where the committed results live
#: The demo preset with 8 pairs per step; every variant changes it as stated. 6 epochs of 250 steps; the learning
#: rate drops tenfold after epoch 5 (step 1250).
BASE = dict(PRESETS["demo"], batch_size=8, backend="cpu", data_seed=0)
#: name: (what changes, the changes, which losses, stages)
VARIANTS = {
    "demo": ("demo: half width, lr 1e-3", {}, (False, True), (150, 300, 600, 1000)),
    "lr3": ("half width, lr 3e-3", dict(lr=3e-3), (False, True), (300, 600, 1000, 1500)),
    "table1": ("full width, lr 3e-3 (the table1 preset)", dict(model_width=1.0, lr=3e-3), (False, True),
               (300, 600, 1000, 1500)),
    "marks10": ("10 marks, lr 1e-3", dict(face_marks=10), (False, True), (300, 600)),
    "width1": ("full width, lr 1e-3", dict(model_width=1.0), (True,), (300, 600)),
    "aux3": ("3 auxiliary images, lr 1e-3", dict(num_aux=3), (True,), (300, 600)),
    "batch16": ("16 pairs per step, lr 1e-3", dict(batch_size=16), (True,), (300, 600)),
}
COLUMNS = ("variant", "dve", "steps", "same_identity_error", "different_identity_error", "train_seconds")


def run_variant(runs: Path, name: str) -> list:
    """Train ``name`` stage by stage (skipping stages already measured) and return its rows."""
    _, changes, losses, stages = VARIANTS[name]
    rows = []
    for dve in losses:
        out = runs / f"{name}-dve{int(dve)}"
        done = out / "stages.jsonl"
        measured = {r["steps"]: r for r in map(json.loads, done.read_text().splitlines())} if done.is_file() else {}
        for steps in stages:
            if steps not in measured:
                config = TrainConfig.from_dict(dict(BASE, **changes, dve=dve, max_steps=steps,
                                                    data_root=str(runs / "data")))
                started = time.time()
                trainer = Trainer(config, out, resume="auto" if (out / "checkpoint.pt").is_file() else None,
                                  progress=sys.stderr.isatty())
                trainer.run()
                seconds = time.time() - started
                test = config_dataset(config, out, "test", config.test_count)
                same, diff, _ = matching_errors(trainer.model, test, config.eval_pairs, config.crop, seed=config.seed)
                measured[steps] = dict(variant=name, dve=int(dve), steps=steps, same_identity_error=round(same, 3),
                                       different_identity_error=round(diff, 3), train_seconds=round(seconds))
                with open(done, "a") as handle:
                    handle.write(json.dumps(measured[steps]) + "\n")
                print(json.dumps(measured[steps]), file=sys.stderr, flush=True)
            rows.append(measured[steps])
    return rows


def _markdown(rows: list) -> str:
    lines = ["# Table 1 ablation: 64-D SmallNet with and without DVE, by training length and setting", "",
             f"Command: `python bench/training/table1_ablation.py RUNS`  ",
             f"Machine: {cpu_name()}, torch {torch.__version__}, one thread per run. Settings: the demo preset "
             "with 8 pairs per step and, per variant, the changes named; seed 0; 100 test pairs; errors in pixels "
             "of the 40-pixel input. Learning rate / 10 after step 1250.", "",
             "| variant | steps | same identity, no DVE / DVE (px) | change | different identity, no DVE / DVE (px) "
             "| change |", "|---|---|---|---|---|---|"]
    for name, (title, _, _, stages) in VARIANTS.items():
        for steps in stages:
            by = {r["dve"]: r for r in rows if r["variant"] == name and r["steps"] == steps}
            cells = []
            for metric in ("same_identity_error", "different_identity_error"):
                off, on = by.get(0, {}).get(metric), by.get(1, {}).get(metric)
                cells.append(f"{'-' if off is None else f'{off:.2f}'} / {'-' if on is None else f'{on:.2f}'}")
                cells.append(f"{on / off - 1:+.0%}" if off and on else "")
            lines.append(f"| {title} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(rows: list, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharex=True)
    for name, colour in zip(("demo", "lr3", "table1"), ("tab:gray", "tab:green", "tab:purple")):
        for dve, style in ((0, "--"), (1, "-")):
            chosen = sorted((r for r in rows if r["variant"] == name and r["dve"] == dve), key=lambda r: r["steps"])
            for ax, metric in zip(axes, ("same_identity_error", "different_identity_error")):
                ax.plot([r["steps"] for r in chosen], [r[metric] for r in chosen], style, marker="o", color=colour,
                        label=f"{VARIANTS[name][0]}, {'DVE' if dve else 'no DVE'}")
    for ax, title in zip(axes, ("same identity", "different identity")):
        ax.set_title(f"{title} matching error (64-D, seed 0)", fontsize=9)
        ax.set_xlabel("optimizer steps (8 pairs each)")
        ax.set_ylabel("pixels of the 40-px input")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.05), ncol=3,
               fontsize=7, frameon=False)
    fig.text(0.01, 0.01, "Dashed: the plain warp loss (eq. 3); solid: DVE (eq. 6). Lower is better.", fontsize=8)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv) -> int:
    torch.set_num_threads(1)
    runs, names = Path(argv[0]), argv[1:] or list(VARIANTS)
    rows = [row for name in names for row in run_variant(runs, name)]
    if set(names) == set(VARIANTS):  # the summary of every variant
        with open(HERE / "table1_ablation.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (HERE / "table1_ablation.md").write_text(_markdown(rows))
        _figure(rows, HERE / "table1_ablation.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
