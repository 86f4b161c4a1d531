"""Figures: nearest-neighbour matches in the style of the paper's figures 1 and 4, and the loss curve."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .checkpoint import load_run
from .data import SPLITS, centre_cropped, config_dataset
from .models import embed, match_keypoints

__all__ = ["draw_matches", "draw_comparison", "draw_loss_curve", "reference_points", "MATCH_CAPTION"]

MATCH_CAPTION = ("Left: a test image with the points to follow (coloured dots; the ringed ones are its annotated "
                 "landmarks). Other columns: other identities; a dot is the pixel whose embedding is nearest to "
                 "the same-coloured point's, a ring of that colour the image's own annotated landmark "
                 "(ground truth): a good embedding puts each landmark's dot inside its ring.")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def reference_points(keypoints: torch.Tensor, size: int, crop: int, count: int = 20, seed: int = 0) -> torch.Tensor:
    """Points to follow across images: the landmarks plus random points inside their bounding box."""
    inner = size - 2 * crop
    generator = torch.Generator().manual_seed(seed)
    if keypoints.numel():
        low, high = keypoints.min(0).values, keypoints.max(0).values
        pad = (high - low) * 0.25
        low, high = (low - pad).clamp(0, inner - 1), (high + pad).clamp(0, inner - 1)
    else:
        low, high = torch.full((2,), inner * 0.2), torch.full((2,), inner * 0.8)
    extra = low + torch.rand(max(0, count - keypoints.shape[0]), 2, generator=generator) * (high - low)
    return torch.cat((keypoints, extra))


def _draw_rows(runs, images, keypoints, config, path, title: Optional[str] = None) -> str:
    """One row per ``(label, model)``: the reference image with its points, then the matches in the others."""
    plt = _pyplot()
    count = images.shape[0]
    points = reference_points(keypoints[0], config.imwidth, config.crop, seed=config.seed)
    landmarks = keypoints.shape[1]
    colours = plt.get_cmap("tab20")(np.arange(len(points)) % 20)
    fig, axes = plt.subplots(len(runs), count, figsize=(2.2 * count, 2.3 * len(runs) + 0.9), squeeze=False)
    for row, (label, model) in enumerate(runs):
        feats = embed(model.eval(), images, next(model.parameters()).device)
        stride = images.shape[-1] / feats.shape[-1]
        for i in range(count):
            ax = axes[row, i]
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
            where = points if i == 0 else match_keypoints(feats[0], feats[i], points, stride)
            ax.scatter(where[:, 0].numpy(), where[:, 1].numpy(), c=colours, s=20, edgecolors="white",
                       linewidths=0.5)
            if landmarks:
                truth = keypoints[i].numpy()
                ax.scatter(truth[:, 0], truth[:, 1], s=90, facecolors="none", edgecolors=colours[:landmarks],
                           linewidths=1.6)
            ax.set(xlim=(-0.5, images.shape[-1] - 0.5), ylim=(images.shape[-2] - 0.5, -0.5), xticks=[], yticks=[])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
            if row == 0:
                ax.set_title("reference" if i == 0 else f"other identity {i}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.text(0.01, 0.01, textwrap.fill(MATCH_CAPTION, 30 * count), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.12 if len(runs) == 1 else 0.06, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def draw_matches(model, dataset, config, path, num_targets: int = 5) -> str:
    """The run's nearest-embedding matches from one test image into ``num_targets`` others (PNG); returns the path."""
    images, keypoints = centre_cropped(dataset, num_targets + 1, config.crop)
    dve = "with DVE" if config.dve else "without DVE"
    return _draw_rows([(f"{config.embedding_dim}-D {dve}", model)], images, keypoints, config, path,
                      f"{config.model} {config.embedding_dim}-D {dve}: nearest-embedding matches")


def draw_comparison(runs, path, num_targets: int = 5) -> str:
    """Figure 4 style: one row per ``(label, model, config)`` run, the same test images (the first run's data)."""
    config = runs[0][2]
    dataset = config_dataset(config, Path(path).parent / "compare-data", SPLITS[config.dataset][2] or "train",
                             max(num_targets + 1, 8))
    images, keypoints = centre_cropped(dataset, num_targets + 1, config.crop)
    return _draw_rows([(label, model) for label, model, _ in runs], images, keypoints, config, path)


def draw_loss_curve(log_path, path) -> Optional[str]:
    """Loss per step (and a running mean) from a ``metrics.jsonl`` log; ``None`` if there is no log."""
    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()] \
        if Path(log_path).is_file() else []
    if not rows:
        return None
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 25)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.35, label="loss of each step")
    ax.plot(steps[window - 1:], smooth, label=f"running mean ({window} steps)")
    ax.set(xlabel="optimizer step", ylabel="training loss (mean pixel distance^pow)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    """``python -m dve_kernels.train.figures RUN_DIR [RUN_DIR ...] --out compare.png``: matches of several runs."""
    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.figures", description=main.__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    runs = [load_run(run)[:2] for run in args.runs]
    print(draw_comparison([(f"{c.embedding_dim}-D {'with' if c.dve else 'without'} DVE", m, c) for c, m in runs],
                          args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
