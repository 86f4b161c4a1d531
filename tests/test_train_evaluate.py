"""Evaluation on cases with known answers: positional one-hot embeddings, exact landmark regression."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from dve_kernels.train.checkpoint import load_run
from dve_kernels.train.data import build_dataset
from dve_kernels.train.evaluate import fit_landmark_regressor, landmark_error_iod, matching_errors
from dve_kernels.train.models import match_keypoints

REPO = Path(__file__).resolve().parents[1]


def _one_hot_codes(height, width, shift=(0, 0)):
    """(H·W, H, W): the embedding of pixel (i, j) is the one-hot code of (i + dy, j + dx)."""
    dy, dx = shift
    codes = torch.zeros(height * width, height, width)
    for i in range(height):
        for j in range(width):
            ii, jj = i + dy, j + dx
            if 0 <= ii < height and 0 <= jj < width:
                codes[ii * width + jj, i, j] = 1.0
    return codes


def test_match_keypoints_one_hot_positions_give_exact_answers():
    codes = _one_hot_codes(9, 11)
    keypoints = torch.tensor([[0.0, 0.0], [4.0, 6.0], [20.0, 16.0], [7.6, 3.4]])  # stride 2 input pixels
    found = match_keypoints(codes, codes, keypoints, stride=2)
    # rounded to the embedding grid: (0,0), (4,6), (20,16), (8,4)
    assert found.tolist() == [[0.0, 0.0], [4.0, 6.0], [20.0, 16.0], [8.0, 4.0]]
    # A target whose content moved by (+2, +1) embedding pixels: every match moves by (4, 2) input pixels.
    target = _one_hot_codes(9, 11, shift=(-1, -2))
    found = match_keypoints(codes, target, keypoints[:2], stride=2)
    assert found.tolist() == [[4.0, 2.0], [8.0, 8.0]]


class _PositionalNet(nn.Module):
    """Embeddings that encode where a pixel is in the *unwarped* image: matching is then perfect up to rounding.

    Input channel 0/1 hold the x/y coordinate of the pixel's content (the test warps coordinate images); the output
    is a sharp Gaussian code of that position on a lattice, so the nearest embedding is the same content.
    """

    stride = 1

    def __init__(self, size):
        super().__init__()
        lattice = torch.linspace(0, 1, size)
        yy, xx = torch.meshgrid(lattice, lattice, indexing="ij")
        self.register_buffer("centres", torch.stack((xx.reshape(-1), yy.reshape(-1)), 1))

    def forward(self, images):
        from dve_kernels.train.models import IMAGE_MEAN, IMAGE_STD

        mean = images.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
        raw = images * std + mean  # undo the evaluation's normalisation
        pos = raw[:, :2].permute(0, 2, 3, 1)  # (B, H, W, 2)
        dist2 = ((pos.unsqueeze(-2) - self.centres) ** 2).sum(-1)
        return torch.exp(-dist2 * 4000.0).permute(0, 3, 1, 2)


class _CoordinateImages(torch.utils.data.Dataset):
    """Images whose channels 0/1 are x/y / (size-1); the 'landmarks' are fixed points; all images identical."""

    has_keypoints = True

    def __init__(self, size, count=8):
        self.size, self.count = size, count
        lattice = torch.linspace(0, 1, size)
        yy, xx = torch.meshgrid(lattice, lattice, indexing="ij")
        self.image = torch.stack((xx, yy, torch.zeros_like(xx)))
        self.keypoints = torch.tensor([[12.0, 12.0], [20.0, 12.0], [16.0, 17.0], [13.0, 21.0], [19.0, 21.0]])

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return {"image": self.image, "keypoints": self.keypoints, "index": index}


def test_matching_protocol_is_zero_for_position_encoding_embeddings():
    # Same content => same embedding, so both the same-identity match (into the warp of the image) and the
    # different-identity match (another, here identical-looking, image) land on the true position, up to
    # the rounding of the keypoint to the pixel grid and the resampling of the warp (< 1 pixel).
    dataset = _CoordinateImages(size=32)
    model = _PositionalNet(size=32)
    same, diff, info = matching_errors(model, dataset, num_pairs=4, crop=4, seed=0)
    assert info == {"pairs": 4, "points_per_image": 5}
    assert same < 0.75 and diff < 0.75, (same, diff)
    # A model that ignores its input matches everything to pixel (0, 0): errors of many pixels.
    class _Constant(nn.Module):
        def forward(self, images):
            return torch.ones(images.shape[0], 4, images.shape[2], images.shape[3])

    same, diff, _ = matching_errors(_Constant(), dataset, num_pairs=4, crop=4, seed=0)
    assert same > 8 and diff > 8


def test_landmark_error_iod_known_numbers():
    truth = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]]])
    assert landmark_error_iod(truth.clone(), truth) == 0.0
    shifted = truth + torch.tensor([3.0, 4.0])  # 5 px off everywhere, IOD 10
    assert abs(landmark_error_iod(shifted, truth) - 50.0) < 1e-5


@pytest.mark.slow  # hundreds of regressor steps / a training subprocess: the second tier
def test_landmark_regression_recovers_a_linear_map_of_soft_argmax_points():
    # Embeddings with one peaked channel per landmark at its position: the 50-point regressor can recover the
    # landmarks almost exactly.
    torch.manual_seed(0)
    size, count = 16, 96
    keypoints = torch.rand(count, 3, 2) * 10 + 3  # pixels of 16x16 images, stride 1
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    feats = torch.stack([torch.exp(-((xx - keypoints[:, k, 0, None, None]) ** 2 +
                                     (yy - keypoints[:, k, 1, None, None]) ** 2) / 2.0) * 8 for k in range(3)], 1)
    feats = torch.cat((feats, torch.full_like(feats[:, :1], 0.5)), 1)  # a background channel
    regressor = fit_landmark_regressor(feats[:64], keypoints[:64], size, steps=400, lr=3e-2)
    with torch.no_grad():
        predicted = (regressor(feats[64:]) + 1) / 2 * (size - 1)
    error = (predicted - keypoints[64:]).norm(dim=-1).mean()
    assert error < 0.6, error
    # Random embeddings carry no information: much worse.
    noise = torch.randn_like(feats)
    regressor = fit_landmark_regressor(noise[:64], keypoints[:64], size, steps=100, lr=2e-2)
    with torch.no_grad():
        predicted = (regressor(noise[64:]) + 1) / 2 * (size - 1)
    assert (predicted - keypoints[64:]).norm(dim=-1).mean() > 4 * error


@pytest.mark.slow  # hundreds of regressor steps / a training subprocess: the second tier
def test_evaluate_cli_on_a_checkpoint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    common = ["--imwidth", "28", "--crop", "4", "--model-width", "0.25", "-C", "8", "--train-count", "16",
              "--test-count", "12", "--batch-size", "8", "--backend", "cpu", "--epochs", "1",
              "--regression-steps", "40", "--regression-train", "16", "--regression-test", "12"]
    done = subprocess.run([sys.executable, "-m", "dve_kernels.train", *common, "--no-eval", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "metrics.json").exists()
    done = subprocess.run([sys.executable, "-m", "dve_kernels.train.evaluate", str(tmp_path), "--eval-pairs", "3",
                           "--out", str(tmp_path / "eval")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["matching"]["pairs"] == 3
    # The CLI's numbers are those of the checkpoint's model, recomputed here from the same test pairs.
    config, model, _ = load_run(tmp_path)
    test_set = build_dataset("synthetic", tmp_path / "data", "test", config.imwidth, count=config.test_count,
                             seed=config.seed, marks=config.face_marks)
    same, diff, _ = matching_errors(model, test_set, 3, config.crop, seed=config.seed)
    assert metrics["same_identity_error"] == pytest.approx(same, rel=1e-6)
    assert metrics["different_identity_error"] == pytest.approx(diff, rel=1e-6)
    assert 0 < metrics["landmark_error_iod"] < 1000
    assert (tmp_path / "eval" / "matches.png").read_bytes()[:4] == b"\x89PNG"
    assert "matches_figure:" in done.stdout
