"""Figures: nearest-neighbour matches in the style of the paper's figures 1 and 4, and the loss curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["draw_matches", "draw_loss_curve", "reference_points"]


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


def draw_matches(model, dataset, config, path, device="cpu", num_targets: int = 5) -> str:
    """A reference image with coloured points and, in ``num_targets`` other test images (other identities), the
    pixel whose embedding is nearest to each point's. Saved as PNG; returns the path."""
    from .evaluate import _cropped, _embed, match_keypoints

    plt = _pyplot()
    count = min(len(dataset), num_targets + 1)
    images, keypoints = _cropped(dataset, count, config.crop)
    feats = _embed(model, images, device)
    stride = images.shape[-1] / feats.shape[-1]
    points = reference_points(keypoints[0], config.imwidth, config.crop, seed=config.seed)
    colours = plt.get_cmap("hsv")(np.linspace(0, 1, len(points), endpoint=False))
    fig, axes = plt.subplots(1, count, figsize=(2.2 * count, 2.6))
    axes = np.atleast_1d(axes)
    for i, ax in enumerate(axes):
        ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        where = points if i == 0 else match_keypoints(feats[0], feats[i], points, stride)
        ax.scatter(where[:, 0].numpy(), where[:, 1].numpy(), c=colours, s=22, edgecolors="white", linewidths=0.6)
        ax.set_title("reference" if i == 0 else f"match {i}", fontsize=9)
        ax.axis("off")
    dve = "with DVE" if config.dve else "without DVE"
    fig.suptitle(f"{config.model} {config.embedding_dim}-D {dve}: nearest-embedding matches", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def draw_loss_curve(log_path, path) -> Optional[str]:
    """Loss per step (and a running mean) from a ``metrics.jsonl`` log; ``None`` if there is no log."""
    log_path = Path(log_path)
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows])
    window = max(1, len(loss) // 25)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, alpha=0.35, label="loss")
    ax.plot(steps[window - 1:], smooth, label=f"running mean ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def draw_comparison(runs, path, num_targets: int = 5, device="cpu") -> str:
    """Figure 4 style: one row per run (e.g. 64-D without and with DVE), the same reference points and images.

    ``runs``: a list of ``(label, model, config)``; the test images come from the first run's dataset settings.
    """
    from .data import SPLITS, build_dataset, data_root
    from .evaluate import _cropped, _embed, match_keypoints

    plt = _pyplot()
    label0, _, config0 = runs[0]
    name = config0.dataset
    split = SPLITS[name][2] or "train"
    dataset = build_dataset(name, data_root(config0, Path(path).parent / "compare-data"), split, config0.imwidth,
                            count=max(num_targets + 1, 8), seed=config0.seed)
    count = min(len(dataset), num_targets + 1)
    images, keypoints = _cropped(dataset, count, config0.crop)
    points = reference_points(keypoints[0], config0.imwidth, config0.crop, seed=config0.seed)
    colours = plt.get_cmap("hsv")(np.linspace(0, 1, len(points), endpoint=False))
    fig, axes = plt.subplots(len(runs), count, figsize=(2.2 * count, 2.4 * len(runs)), squeeze=False)
    for row, (label, model, config) in enumerate(runs):
        feats = _embed(model.eval(), images, device)
        stride = images.shape[-1] / feats.shape[-1]
        for i in range(count):
            ax = axes[row, i]
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
            where = points if i == 0 else match_keypoints(feats[0], feats[i], points, stride)
            ax.scatter(where[:, 0].numpy(), where[:, 1].numpy(), c=colours, s=22, edgecolors="white",
                       linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main(argv=None) -> int:
    """``python -m dve_kernels.train.figures RUN_DIR [RUN_DIR ...] --out compare.png``: matches of several runs."""
    import argparse

    from .config import TrainConfig
    from .loop import CHECKPOINT_NAME, load_checkpoint
    from .models import build_model

    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.figures", description=main.__doc__)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    runs = []
    for run in args.runs:
        ckpt = load_checkpoint(Path(run) / CHECKPOINT_NAME)
        config = TrainConfig.from_dict(ckpt["config"])
        model = build_model(config.model, config.embedding_dim,
                            **({"width": config.model_width} if config.model == "smallnet" else {}))
        model.load_state_dict(ckpt["model"])
        label = f"{config.embedding_dim}-D {'with' if config.dve else 'without'} DVE"
        runs.append((label, model, config))
    print(draw_comparison(runs, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
