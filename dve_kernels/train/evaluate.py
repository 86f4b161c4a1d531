"""Evaluation of learned embeddings: the paper's matching protocol (Table 1, the original's ``test_matching.py``)
and landmark regression (section 4.1, its ``IntermediateKeypointPredictor``), both described in the README.

Run as ``python -m dve_kernels.train.evaluate RUN_DIR`` to evaluate a run's checkpoint again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..warps import TPSWarper
from .checkpoint import CHECKPOINT_NAME, load_run
from .config import TrainConfig
from .data import SPLITS, centre_cropped, config_dataset, stack_items
from .figures import draw_loss_curve, draw_matches
from .models import embed, match_keypoints

__all__ = ["matching_errors", "LandmarkRegressor", "fit_landmark_regressor", "landmark_error_iod",
           "evaluate_run", "print_summary", "main", "EVAL_WARP"]

#: The original's evaluation warps (test_matching.py): half the training spreads, one warp at full strength.
EVAL_WARP = dict(warpsd_all=0.001 * 0.5, warpsd_subset=0.01 * 0.5, transsd=0.1 * 0.5, scalesd=0.1 * 0.5,
                 rotsd=5 * 0.5, im1_multiplier=1.0)


def matching_errors(model: nn.Module, dataset, num_pairs: int, crop: int, device="cpu", seed: int = 0,
                    batch_pairs: int = 16, progress: bool = False):
    """Mean same- and different-identity matching errors (pixels) over ``num_pairs`` test pairs ``(a, b)``: the
    landmarks of ``x_a`` matched into ``x'_a`` (truth: the warped landmarks) and into ``x'_b`` (truth: ``b``'s own).

    Returns ``(same, different, details)``; ``different`` is ``None`` for unlabelled datasets, whose same-
    identity error is measured on a 5x5 lattice of points instead of landmarks.
    """
    model.eval()
    warper = TPSWarper(crop=crop, **EVAL_WARP)
    generator = torch.Generator().manual_seed(seed)
    num_pairs = min(num_pairs, len(dataset) // 2)
    if num_pairs < 1:
        raise ValueError(f"matching needs at least 2 test images, got {len(dataset)}")
    labelled = getattr(dataset, "has_keypoints", True)
    same, diff = [], []
    for start in tqdm(range(0, num_pairs, batch_pairs), desc="matching", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        pairs = range(start, min(num_pairs, start + batch_pairs))
        images, keypoints = stack_items(dataset, [i for p in pairs for i in (2 * p, 2 * p + 1)])
        if not labelled:
            size = images.shape[-1]
            lattice = torch.linspace(crop + 0.2 * (size - 2 * crop), size - crop - 1 - 0.2 * (size - 2 * crop), 5)
            yy, xx = torch.meshgrid(lattice, lattice, indexing="ij")
            keypoints = torch.stack((xx.reshape(-1), yy.reshape(-1)), 1).expand(images.shape[0], -1, -1)
        warped = warper(images, keypoints.float(), generator=generator)
        feats_x = embed(model, warped.x, device)
        feats_xp = embed(model, warped.x_prime, device)
        stride = warped.x.shape[-1] / feats_x.shape[-1]
        for a in range(0, 2 * len(pairs), 2):  # same identity: into x'_a; different identity: into x'_(a + 1)
            for errors, b in [(same, a), (diff, a + 1)][:1 + labelled]:
                found = match_keypoints(feats_x[a], feats_xp[b], warped.keypoints_x[a], stride)
                errors.append((found - warped.keypoints_x_prime[b]).norm(dim=1))
    diff_error = float(torch.cat(diff).mean()) if diff else None
    return float(torch.cat(same).mean()), diff_error, {"pairs": num_pairs, "points_per_image": keypoints.shape[1]}


class LandmarkRegressor(nn.Module):
    """The original's intermediate-keypoint regressor on frozen embeddings: per landmark, ``num_points`` learned
    1x1xC filters, a spatial softmax of ``softargmax_mul`` times each correlation and a soft-argmax give
    ``num_points`` ``(x, y)`` points, and a linear map of them (no bias) gives the landmark."""

    def __init__(self, embedding_dim: int, num_landmarks: int, num_points: int = 50, softargmax_mul: float = 50.0):
        super().__init__()
        self.num_landmarks, self.num_points, self.softargmax_mul = num_landmarks, num_points, softargmax_mul
        self.filters = nn.Parameter(torch.randn(embedding_dim, num_landmarks * num_points))
        bound = 1.0 / (2 * num_points) ** 0.5
        self.linear = nn.Parameter(torch.empty(num_landmarks, 2 * num_points, 2).uniform_(-bound, bound))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K, 2)`` landmarks, normalised ``[-1, 1]`` (align-corners) in the input image."""
        batch, channels, height, width = feats.shape
        # unit embeddings and filters: the softmax temperature means the same for every model
        flat = F.normalize(feats.reshape(batch, channels, height * width), dim=1)
        filters = F.normalize(self.filters, dim=0)
        logits = torch.einsum("cq,bcn->bqn", filters, flat) * self.softargmax_mul
        prob = logits.softmax(dim=-1).view(batch, -1, height, width)
        xs = torch.linspace(-1, 1, width, device=feats.device, dtype=feats.dtype)
        ys = torch.linspace(-1, 1, height, device=feats.device, dtype=feats.dtype)
        pts = torch.stack(((prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)), dim=-1)  # soft-argmax points
        return torch.einsum("bkp,kpo->bko", pts.view(batch, self.num_landmarks, 2 * self.num_points), self.linear)


def fit_landmark_regressor(feats: torch.Tensor, keypoints: torch.Tensor, size: int, steps: int = 1500,
                           lr: float = 1e-2, seed: int = 0, batch_size: int = 64,
                           progress: bool = False) -> LandmarkRegressor:
    """Fit :class:`LandmarkRegressor` on frozen ``feats (N, C, H, W)`` to ``keypoints (N, K, 2)`` pixels of
    ``size x size`` images (mean squared error in normalised coordinates, Adam)."""
    torch.manual_seed(seed)
    regressor = LandmarkRegressor(feats.shape[1], keypoints.shape[1])
    optimizer = torch.optim.Adam(regressor.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [int(steps * 0.8) + 1], gamma=0.1)
    target = keypoints / (size - 1) * 2 - 1
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="landmark regressor", unit="step", disable=not progress, leave=False):
        idx = torch.randint(0, feats.shape[0], (min(batch_size, feats.shape[0]),), generator=generator)
        loss = F.mse_loss(regressor(feats[idx]), target[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return regressor


def landmark_error_iod(predicted: torch.Tensor, truth: torch.Tensor, eye_indices=(0, 1)) -> float:
    """Mean landmark error in percent of the inter-ocular distance: ``predicted``/``truth`` ``(N, K, 2)`` pixels."""
    iod = (truth[:, eye_indices[0]] - truth[:, eye_indices[1]]).norm(dim=-1)
    errors = (predicted - truth).norm(dim=-1).mean(dim=1) / iod
    return float(errors.mean() * 100)


def evaluate_run(model: nn.Module, config: TrainConfig, out: Path, device="cpu", figures: bool = True,
                 progress: bool = True) -> dict:
    """Matching + landmark regression on the configured dataset; writes ``metrics.json`` and the figures."""
    started = time.time()
    model = model.to(device).eval()
    name = config.dataset
    _, fit_split, test_split = SPLITS[name]
    if test_split is None:  # unlabelled folder: same-identity matching on a lattice of points of the training images
        test_set, fit_set = config_dataset(config, out, "train"), None
    else:
        test_set = config_dataset(config, out, test_split, config.test_count)
        fit_set = config_dataset(config, out, fit_split, min(config.train_count, max(config.regression_train, 1)))
    same, diff, match_info = matching_errors(model, test_set, config.eval_pairs, config.crop, device,
                                             seed=config.seed, progress=progress)
    landmark, regression_info = None, {}
    if fit_set is not None:  # the regressor on frozen embeddings of centre-cropped images
        train_images, train_kp = centre_cropped(fit_set, config.regression_train, config.crop)
        test_images, test_kp = centre_cropped(test_set, config.regression_test, config.crop)
        size = train_images.shape[-1]
        regressor = fit_landmark_regressor(embed(model, train_images, device), train_kp, size,
                                           steps=config.regression_steps, seed=config.seed, progress=progress)
        with torch.no_grad():
            predicted = (regressor(embed(model, test_images, device)) + 1) / 2 * (size - 1)
        landmark = landmark_error_iod(predicted, test_kp, getattr(test_set, "eye_indices", (0, 1)))
        regression_info = {"train_images": len(train_images), "test_images": len(test_images)}
    metrics = dict(same_identity_error=same, different_identity_error=diff, landmark_error_iod=landmark,
                   units={"same_identity_error": "pixels", "different_identity_error": "pixels",
                          "landmark_error_iod": "percent of inter-ocular distance"},
                   matching=match_info, regression=regression_info, dataset=name, model=config.model,
                   embedding_dim=config.embedding_dim, dve=config.dve, input_size=config.input_size,
                   eval_seconds=round(time.time() - started, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    paths = {"metrics": str(out / "metrics.json")}
    if figures:
        paths["matches_figure"] = draw_matches(model, test_set, config, out / "matches.png")
        curve = draw_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        if curve:
            paths["loss_figure"] = curve
    return {"metrics": metrics, "paths": paths}


def print_summary(result: dict) -> None:
    """The three errors of an :func:`evaluate_run` result as one JSON line, then the files it wrote."""
    print(json.dumps({k: result["metrics"][k] for k in ("same_identity_error", "different_identity_error",
                                                         "landmark_error_iod")}))
    for key, path in result["paths"].items():
        print(f"{key}: {path}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dve_kernels.train.evaluate",
                                     description="Evaluate a training run: matching errors (Table 1), landmark "
                                                 "regression (% inter-ocular distance) and figures.")
    parser.add_argument("run_dir", help="a run directory written by python -m dve_kernels.train")
    parser.add_argument("--checkpoint", help=f"default: RUN_DIR/{CHECKPOINT_NAME}")
    parser.add_argument("--out", help="where metrics.json and the figures go (default RUN_DIR)")
    parser.add_argument("--eval-pairs", type=int, help="test pairs for the matching errors (default: the run's)")
    parser.add_argument("--data-root", help="the dataset's folder (default: the run's)")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    config, model, _ = load_run(args.checkpoint or run_dir)
    for name in ("eval_pairs", "data_root"):  # the run's own unless given
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    print_summary(evaluate_run(model, config, Path(args.out or run_dir), device=args.device,
                               figures=not args.no_figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
