"""dve_kernels.warps: the grid convention of docs/contract.md section 2, keypoint warping, the original defaults."""

import math

import pytest
import torch
import torch.nn.functional as F

from dve_kernels import warps
from dve_kernels.warps import TPSWarper, normalize_pixels, unnormalize_pixels


def _blob_images(batch, size, points, sigma=2.5):
    ys, xs = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing="ij")
    images = torch.zeros(batch, len(points), size, size, dtype=torch.float64)
    for k, (px, py) in enumerate(points):
        images[:, k] = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma ** 2))
    return images


def _centroids(images):
    size_y, size_x = images.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(size_y).double(), torch.arange(size_x).double(), indexing="ij")
    weight = images.double() ** 4
    total = weight.sum((-2, -1))
    return torch.stack(((weight * xs).sum((-2, -1)) / total, (weight * ys).sum((-2, -1)) / total), -1)


def test_original_defaults():
    w = TPSWarper()
    assert (w.num_control, w.warpsd_all, w.warpsd_subset, w.transsd, w.scalesd, w.rotsd, w.im1_multiplier) == \
        (10, 0.001, 0.01, 0.1, 0.1, 5.0, 0.5)
    control = warps.tps_control_points()
    assert control.shape == (100, 2)
    assert control.min() == -1 and control.max() == 1
    basis = warps.tps_basis(7, 9, control)
    assert basis.shape == (63, 103)


#: The original's ``Warper`` (utils/tps.py) with its defaults: (warpsd_all, warpsd_subset, transsd, scalesd, rotsd)
#: of the first warp (0.5 multiplies its TPS spreads only) and of the second. Written out, not derived.
ORIGINAL_WARP_1 = dict(warpsd_all=0.0005, warpsd_subset=0.005, transsd=0.1, scalesd=0.1, rotsd=5.0)
ORIGINAL_WARP_2 = dict(warpsd_all=0.001, warpsd_subset=0.01, transsd=0.1, scalesd=0.1, rotsd=5.0)


def test_the_two_warps_use_the_originals_spreads():
    warper = TPSWarper()
    assert warper.spreads(first=True) == pytest.approx(ORIGINAL_WARP_1, rel=1e-12)
    assert warper.spreads(first=False) == pytest.approx(ORIGINAL_WARP_2, rel=1e-12)
    # End to end: a pair is x' = sample(image, g1), x = sample(x', g2), g1 and g2 drawn (in that order, from the
    # same generator) with exactly those spreads; the returned grid is g2.
    size = 24
    images = torch.rand(3, 2, size, size, dtype=torch.float64)
    out = warper(images, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    w1 = warps.random_tps_weights(3, generator=g, **ORIGINAL_WARP_1)
    w2 = warps.random_tps_weights(3, generator=g, **ORIGINAL_WARP_2)
    control = warps.tps_control_points(dtype=torch.float64)
    g1, g2 = warps.tps_grid(w1, size, size, control), warps.tps_grid(w2, size, size, control)
    x_prime = F.grid_sample(images, g1, align_corners=True)
    assert torch.allclose(out.grid, g2, atol=1e-12), (out.grid - g2).abs().max()
    assert torch.allclose(out.x_prime, x_prime, atol=1e-12)
    assert torch.allclose(out.x, F.grid_sample(x_prime, g2, align_corners=True), atol=1e-12)
    # The measured spreads of 20,000 draws: rotation 5 degrees and translation 0.1 in both warps (not halved).
    for first, spreads in ((True, ORIGINAL_WARP_1), (False, ORIGINAL_WARP_2)):
        w = warper.sample_weights(20000, torch.Generator().manual_seed(1), first=first)
        rot = torch.atan2(w[:, 102, 0], w[:, 101, 0]) * 180 / math.pi
        assert abs(rot.std().item() - spreads["rotsd"]) < 0.2, (first, rot.std().item())
        assert abs(w[:, 100].std().item() - spreads["transsd"]) < 0.004, (first, w[:, 100].std().item())
        assert torch.equal(w, warps.random_tps_weights(20000, generator=torch.Generator().manual_seed(1), **spreads))


def test_weight_statistics_follow_the_spreads():
    # Large sample: the spreads of the affine part and of the control weights match the arguments.
    g = torch.Generator().manual_seed(0)
    w = warps.random_tps_weights(20000, warpsd_all=0.001, warpsd_subset=0.01, transsd=0.1, scalesd=0.1,
                                 rotsd=5, generator=g)
    assert w.shape == (20000, 103, 2) and w.dtype == torch.float64
    tx, ty = w[:, 100, 0], w[:, 100, 1]
    assert abs(tx.std().item() - 0.1) < 0.004 and abs(ty.std().item() - 0.1) < 0.004
    a, b = w[:, 101, 0], w[:, 101, 1]  # sc cos, -sc sin
    scale = torch.sqrt(a ** 2 + b ** 2)
    rot = torch.atan2(-b, a) * 180 / math.pi
    assert abs(scale.mean().item() - 1.0) < 0.003 and abs(scale.std().item() - 0.1) < 0.004
    assert abs(rot.std().item() - 5.0) < 0.2
    assert torch.allclose(w[:, 102, 0], -b) and torch.allclose(w[:, 102, 1], a)  # a rotation matrix
    ctrl = w[:, :100].reshape(-1)
    big = ctrl.abs() > 0.004  # almost only the re-drawn half (sd 0.01) exceeds 4 sd of 0.001
    frac = big.double().mean().item()
    assert 0.337 < frac < 0.352  # P(|N(0, .01)| > .004) / 2 = 0.3446 (half re-drawn), the rest adds 3e-5


def test_identity_and_translation_follow_the_align_corners_convention():
    size = 17
    control = warps.tps_control_points(dtype=torch.float64)
    weights = torch.zeros(1, 103, 2, dtype=torch.float64)
    weights[0, 101, 0] = 1.0  # x coefficient of x
    weights[0, 102, 1] = 1.0  # y coefficient of y
    grid = warps.tps_grid(weights, size, size, control)
    pixels = unnormalize_pixels(grid, size, size)
    ys, xs = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing="ij")
    assert torch.allclose(pixels[0, ..., 0], xs, atol=1e-12) and torch.allclose(pixels[0, ..., 1], ys, atol=1e-12)
    # A translation of exactly 3 pixels right and 2 down in normalised units: x'(p) = image(p + (3, 2)).
    weights[0, 100] = torch.tensor([3 * 2 / (size - 1), 2 * 2 / (size - 1)], dtype=torch.float64)
    grid = warps.tps_grid(weights, size, size, control)
    image = torch.rand(1, 2, size, size, dtype=torch.float64)
    moved = F.grid_sample(image, grid, align_corners=True)
    assert torch.allclose(moved[..., :size - 2, :size - 3], image[..., 2:, 3:], atol=1e-12)
    assert normalize_pixels(torch.tensor([[0.0, size - 1.0]]), size, size).tolist() == [[-1.0, 1.0]]


@pytest.mark.parametrize("crop", [0, 9])
def test_grid_maps_x_into_x_prime(crop):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 41, 41, dtype=torch.float64)
    images = F.avg_pool2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), 5, stride=1)  # smooth
    out = TPSWarper(crop=crop)(images, generator=g)
    size = 41 - 2 * crop
    assert out.x.shape == out.x_prime.shape == (3, 3, size, size)
    assert out.grid.shape == (3, size, size, 2)
    resampled = F.grid_sample(out.x_prime, out.grid, align_corners=True)
    pixels = unnormalize_pixels(out.grid, size, size)
    inside = ((pixels >= 1) & (pixels <= size - 2)).all(-1)  # bilinear footprint within the cropped x'
    assert inside.double().mean() > 0.6
    err = (resampled - out.x).abs().amax(1)[inside]
    assert err.max() < 1e-12
    # The warps are real: x is not x' and the grid is not the identity.
    lattice = warps._lattice(size, size, dtype=torch.float64).reshape(size, size, 2)
    assert (out.grid - lattice).abs().max() > 0.01


def test_keypoints_follow_the_image_content():
    # Small blobs well inside 64x64 images: the original's warps (5 degrees, 10% scale and shift) keep them whole.
    points = [(16.0, 18.5), (40.5, 20.0), (28.0, 34.5), (18.5, 44.0), (38.5, 43.5)]
    images = _blob_images(4, 64, points, sigma=1.5)
    kp = torch.tensor(points, dtype=torch.float64).expand(4, -1, -1).clone()
    out = TPSWarper(crop=8)(images, kp, generator=torch.Generator().manual_seed(3))
    assert out.keypoints_x.shape == out.keypoints_x_prime.shape == (4, 5, 2)
    for image, keypoints in ((out.x, out.keypoints_x), (out.x_prime, out.keypoints_x_prime)):
        found = _centroids(image)
        assert (found - keypoints).abs().max() < 0.25, (found - keypoints).abs().max()
    # Keypoints moved by more than the tolerance, so the test can tell a wrong inversion.
    assert (out.keypoints_x - (kp - 8)).abs().max() > 1.0


def test_keypoint_inversion_is_exact_and_agrees_with_nearest_pixel_search():
    g = torch.Generator().manual_seed(4)
    weights = TPSWarper().sample_weights(3, g)
    control = warps.tps_control_points(dtype=torch.float64)
    targets = torch.rand(3, 7, 2, generator=g, dtype=torch.float64) * 1.2 - 0.6
    found = warps.invert_tps_points(targets, weights, control, 33, 33)
    assert (warps.tps_transform(found, weights, control) - targets).abs().max() < 1e-10
    # The original's k-d tree answer: the pixel whose grid value is nearest.
    grid = warps.tps_grid(weights, 33, 33, control).reshape(3, -1, 2)
    lattice = warps._lattice(33, 33, dtype=torch.float64)
    nearest = lattice[torch.cdist(targets, grid).argmin(-1)]
    gap = unnormalize_pixels(found, 33, 33) - unnormalize_pixels(nearest, 33, 33)
    assert gap.abs().max() <= 0.75


def test_seeded_and_device_independent_parameters():
    images = torch.rand(2, 3, 20, 20)
    a = TPSWarper(crop=2)(images, generator=torch.Generator().manual_seed(7))
    b = TPSWarper(crop=2)(images, generator=torch.Generator().manual_seed(7))
    c = TPSWarper(crop=2)(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.x, b.x) and torch.equal(a.grid, b.grid)
    assert not torch.equal(a.grid, c.grid)
    d = TPSWarper(crop=2)(images.double(), generator=torch.Generator().manual_seed(7))
    assert d.grid.dtype == torch.float64
    assert (d.grid.float() - a.grid).abs().max() < 1e-5
    pairs = a.interleaved()
    assert torch.equal(pairs[0::2], a.x) and torch.equal(pairs[1::2], a.x_prime)


def test_bad_input():
    with pytest.raises(ValueError, match="images must be a \\(B, C, H, W\\)"):
        TPSWarper()(torch.rand(3, 10, 10))
    with pytest.raises(TypeError, match="floating point"):
        TPSWarper()(torch.zeros(1, 3, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="crop=5 leaves nothing"):
        TPSWarper(crop=5)(torch.rand(1, 3, 10, 10))
    with pytest.raises(ValueError, match="keypoints must be"):
        TPSWarper()(torch.rand(2, 3, 10, 10), torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match="rotsd"):
        TPSWarper(rotsd=-1)
    with pytest.raises(ValueError, match="crop"):
        TPSWarper(crop=-1)
