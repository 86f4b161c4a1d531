"""Batched random thin-plate-spline (TPS) warps: training pairs ``(x, x', grid)`` on any device.

This is the transformation family of the DVE paper (section 4.1, the random TPS warps of Thewlis et al.
2017), re-implemented batched and device-agnostic with the original repository's defaults:

- a 10 x 10 lattice of control points over ``[-1, 1]^2`` and the kernel ``U(d²) = d² · log(d² + 1e-5)``
  (``d²`` the squared distance, as in the original);
- per warp: every control weight ``~ N(0, warpsd_all)``, then a random half of them re-drawn
  ``~ N(0, warpsd_subset)``; an affine part with rotation ``~ N(0, rotsd)`` degrees, scale ``1 + N(0, scalesd)``
  and translations ``~ N(0, transsd)`` (normalised units);
- the double warp: ``x' = sample(image, g1)`` and ``x = sample(x', g2)`` with two independent warps, so that
  neither image of the pair is the unwarped original; the pair's ``grid`` is ``g2``. As in the original, the
  first warp's *TPS* spreads (``warpsd_all``, ``warpsd_subset``) are multiplied by ``im1_multiplier`` (0.5) and
  its affine spreads are not; the second warp uses the spreads as given. With the defaults: warp 1 draws
  (warpsd_all, warpsd_subset, transsd, scalesd, rotsd) = (0.0005, 0.005, 0.1, 0.1, 5°), warp 2
  (0.001, 0.01, 0.1, 0.1, 5°) (docs/contract.md section 2);
- the crop: both images lose ``crop`` pixels on every side *after* warping (so no black borders are seen),
  and the grid is re-expressed in the cropped frame.

Grid convention (docs/contract.md section 2): ``grid`` is ``(B, H, W, 2)`` normalised ``(x, y)`` in ``[-1, 1]`` with
align-corners, ``pixel = (g + 1) / 2 · (W - 1)``; for each pixel of ``x`` it says where that pixel lies in ``x'``,
so ``x == grid_sample(x', grid, align_corners=True)`` wherever the sample falls inside ``x'``.

Randomness comes from a ``torch.Generator`` on the CPU (a few hundred numbers per image), so the same
seed gives the same warps on every device; the dense work (grids, resampling) runs where the images are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .precision import accumulate_dtype

__all__ = [
    "TPSWarper",
    "WarpedPairs",
    "tps_control_points",
    "tps_kernel",
    "random_tps_weights",
    "tps_transform",
    "tps_grid",
    "tps_basis",
    "invert_tps_points",
    "normalize_pixels",
    "unnormalize_pixels",
]

#: The original's defaults (utils/tps.py ``Warper``).
DEFAULT_NUM_CONTROL = 10
DEFAULT_WARPSD_ALL = 0.001
DEFAULT_WARPSD_SUBSET = 0.01
DEFAULT_TRANSSD = 0.1
DEFAULT_SCALESD = 0.1
DEFAULT_ROTSD = 5.0
DEFAULT_IM1_MULTIPLIER = 0.5

#: Inside the log of the TPS kernel, as in the original (keeps ``U(0) = 0`` finite).
_KERNEL_EPS = 1e-5


def normalize_pixels(xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel ``(x, y)`` to align-corners normalised coordinates in ``[-1, 1]``."""
    scale = xy.new_tensor([width - 1.0, height - 1.0])
    return 2.0 * xy / scale - 1.0


def unnormalize_pixels(g: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Align-corners normalised ``(x, y)`` to pixels: ``(g + 1) / 2 · (W - 1)`` (``H - 1`` for y)."""
    scale = g.new_tensor([width - 1.0, height - 1.0])
    return (g + 1.0) / 2.0 * scale


def _lattice(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(H·W, 2)`` normalised ``(x, y)`` of every pixel centre, row-major."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


def tps_control_points(num_control: int = DEFAULT_NUM_CONTROL, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(K, 2)`` control points, ``K = num_control²``, on a regular lattice over ``[-1, 1]²``."""
    return _lattice(num_control, num_control, device=device, dtype=dtype)


def tps_kernel(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``U(d²) = d² · log(d² + 1e-5)`` between ``points (..., P, 2)`` and ``control (K, 2)``: ``(..., P, K)``."""
    d2 = ((points.unsqueeze(-2) - control) ** 2).sum(-1)
    return d2 * torch.log(d2 + _KERNEL_EPS)


def random_tps_weights(batch: int, num_control: int = DEFAULT_NUM_CONTROL, *, warpsd_all: float = DEFAULT_WARPSD_ALL,
                       warpsd_subset: float = DEFAULT_WARPSD_SUBSET, transsd: float = DEFAULT_TRANSSD,
                       scalesd: float = DEFAULT_SCALESD, rotsd: float = DEFAULT_ROTSD,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random TPS parameters, ``(B, K + 3, 2)`` float64 on the CPU.

    Rows ``0..K-1`` are the control-point weights, then the affine part: row ``K`` the translation
    ``(tx, ty)``, rows ``K+1, K+2`` the coefficients of x and y (a rotation by ``rot`` scaled by ``sc``),
    laid out as in the original so that ``[U, 1, x, y] @ weights`` is the warp.
    """
    num = num_control * num_control
    gen = dict(generator=generator)
    weights = torch.randn(batch, num, 2, dtype=torch.float64, **gen) * warpsd_all
    subset = torch.rand(batch, num, 2, dtype=torch.float64, **gen) > 0.5
    redraw = torch.randn(batch, num, 2, dtype=torch.float64, **gen) * warpsd_subset
    weights = torch.where(subset, redraw, weights)
    rot = torch.randn(batch, dtype=torch.float64, **gen) * rotsd * math.pi / 180.0
    sc = 1.0 + torch.randn(batch, dtype=torch.float64, **gen) * scalesd
    tx = torch.randn(batch, dtype=torch.float64, **gen) * transsd
    ty = torch.randn(batch, dtype=torch.float64, **gen) * transsd
    cos, sin = sc * torch.cos(rot), sc * torch.sin(rot)
    affine = torch.stack((torch.stack((tx, ty), -1),
                          torch.stack((cos, -sin), -1),
                          torch.stack((sin, cos), -1)), dim=1)
    return torch.cat((weights, affine), dim=1)


def tps_transform(points: torch.Tensor, weights: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Apply TPS warps to normalised points: ``points (B, P, 2)``, ``weights (B, K + 3, 2)`` -> ``(B, P, 2)``."""
    num = control.shape[0]
    kernel = tps_kernel(points, control)
    out = kernel @ weights[:, :num]
    out = out + weights[:, num:num + 1] + points[..., :1] * weights[:, num + 1:num + 2] \
        + points[..., 1:] * weights[:, num + 2:num + 3]
    return out


def _tps_jacobian(points: torch.Tensor, weights: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """``(B, P, 2, 2)`` Jacobian ``d out_i / d p_j`` of :func:`tps_transform`."""
    num = control.shape[0]
    diff = points.unsqueeze(-2) - control  # (B, P, K, 2)
    d2 = (diff ** 2).sum(-1)
    dU = torch.log(d2 + _KERNEL_EPS) + d2 / (d2 + _KERNEL_EPS)  # dU/d(d²)
    grad_kernel = 2.0 * dU.unsqueeze(-1) * diff  # (B, P, K, 2): dU_k/dp_j
    jac = torch.einsum("bpkj,bki->bpij", grad_kernel, weights[:, :num])
    linear = torch.stack((weights[:, num + 1], weights[:, num + 2]), dim=-1)  # (B, 2 out, 2 in)
    return jac + linear.unsqueeze(1)


def tps_basis(height: int, width: int, control: torch.Tensor) -> torch.Tensor:
    """``(H·W, K + 3)`` rows ``[U(pixel, control_k)..., 1, x, y]``: ``basis @ weights`` is the warp's grid."""
    pixels = _lattice(height, width, device=control.device, dtype=control.dtype)
    ones = torch.ones(pixels.shape[0], 1, device=control.device, dtype=control.dtype)
    return torch.cat((tps_kernel(pixels, control), ones, pixels), dim=1)


def tps_grid(weights: torch.Tensor, height: int, width: int, control: torch.Tensor,
             basis: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The sampling grid ``(B, H, W, 2)`` of TPS warps at every pixel of an ``H x W`` image.

    ``basis`` (from :func:`tps_basis`) may be passed in to reuse it across batches: it depends only on the size.
    """
    if basis is None:
        basis = tps_basis(height, width, control)
    return torch.matmul(basis, weights).reshape(weights.shape[0], height, width, 2)


def invert_tps_points(targets: torch.Tensor, weights: torch.Tensor, control: torch.Tensor, height: int,
                      width: int, iterations: int = 8) -> torch.Tensor:
    """Solve ``tps_transform(p) = targets`` for ``p``: where points of the sampled image ended up.

    A warp defined by a sampling grid moves image content *backwards*: output pixel ``p`` shows the input at
    ``g(p)``. A keypoint at input position ``q`` therefore appears at ``g⁻¹(q)``. The original finds the pixel
    whose grid value is nearest to ``q`` (a k-d tree, pixel-accurate); this starts from that pixel and refines it
    with Newton steps on the analytic TPS, which is exact to float precision for these mild warps.

    Args:
        targets: ``(B, P, 2)`` normalised ``(x, y)``.
        weights: ``(B, K + 3, 2)``.
    Returns:
        ``(B, P, 2)`` normalised ``(x, y)``.
    """
    batch = targets.shape[0]
    pixels = _lattice(height, width, device=weights.device, dtype=weights.dtype)
    grid = tps_transform(pixels.expand(batch, -1, -1), weights, control)  # (B, HW, 2)
    nearest = torch.cdist(targets, grid).argmin(dim=-1)  # (B, P)
    points = pixels[nearest]
    for _ in range(iterations):
        residual = tps_transform(points, weights, control) - targets
        jac = _tps_jacobian(points, weights, control)
        step = torch.linalg.solve(jac, residual.unsqueeze(-1)).squeeze(-1)
        points = points - step
    return points


@dataclass
class WarpedPairs:
    """One batch of training pairs.

    Attributes:
        x: ``(B, C, Hc, Wc)`` the doubly warped images (the source of the loss).
        x_prime: ``(B, C, Hc, Wc)`` the singly warped images (the target).
        grid: ``(B, Hc, Wc, 2)`` for each pixel of ``x``, where it lies in ``x_prime`` (normalised, align-corners).
        keypoints_x: ``(B, P, 2)`` keypoints in ``x`` (pixels), or ``None``.
        keypoints_x_prime: ``(B, P, 2)`` keypoints in ``x_prime`` (pixels), or ``None``.
    """

    x: torch.Tensor
    x_prime: torch.Tensor
    grid: torch.Tensor
    keypoints_x: Optional[torch.Tensor] = None
    keypoints_x_prime: Optional[torch.Tensor] = None

    def interleaved(self) -> torch.Tensor:
        """``(2B, C, Hc, Wc)`` with ``x = out[0::2]`` and ``x' = out[1::2]``, the loss's pair layout."""
        batch = self.x.shape[0]
        return torch.stack((self.x, self.x_prime), dim=1).reshape(2 * batch, *self.x.shape[1:])


class TPSWarper:
    """Random TPS training pairs with the original repository's defaults.

    Args:
        warpsd_all, warpsd_subset, transsd, scalesd, rotsd: spreads of the random warps (see module docstring).
        im1_multiplier: multiplies the TPS spreads (``warpsd_all``, ``warpsd_subset``) of the first warp only
            (the original's 0.5); the affine spreads and the second warp are not scaled.
        crop: pixels removed on every side after warping.
        num_control: control points per side.

    Call it with ``images (B, C, H, W)`` (any float dtype, any device) and optionally ``keypoints (B, P, 2)``
    pixel ``(x, y)`` in those images; it returns :class:`WarpedPairs` of size ``H - 2·crop``.
    """

    def __init__(self, *, warpsd_all: float = DEFAULT_WARPSD_ALL, warpsd_subset: float = DEFAULT_WARPSD_SUBSET,
                 transsd: float = DEFAULT_TRANSSD, scalesd: float = DEFAULT_SCALESD, rotsd: float = DEFAULT_ROTSD,
                 im1_multiplier: float = DEFAULT_IM1_MULTIPLIER, crop: int = 0,
                 num_control: int = DEFAULT_NUM_CONTROL):
        for name, value in dict(warpsd_all=warpsd_all, warpsd_subset=warpsd_subset, transsd=transsd,
                                scalesd=scalesd, rotsd=rotsd, im1_multiplier=im1_multiplier).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(crop, int) or crop < 0:
            raise ValueError(f"crop must be an int >= 0, got {crop!r}")
        if not isinstance(num_control, int) or num_control < 2:
            raise ValueError(f"num_control must be an int >= 2, got {num_control!r}")
        self.warpsd_all = float(warpsd_all)
        self.warpsd_subset = float(warpsd_subset)
        self.transsd = float(transsd)
        self.scalesd = float(scalesd)
        self.rotsd = float(rotsd)
        self.im1_multiplier = float(im1_multiplier)
        self.crop = crop
        self.num_control = num_control
        self._basis_cache = {}

    def _basis(self, height: int, width: int, device, dtype):
        key = (height, width, str(device), dtype)
        if key not in self._basis_cache:
            control = tps_control_points(self.num_control, device=device, dtype=dtype)
            self._basis_cache = {key: (control, tps_basis(height, width, control))}  # keep only the latest size
        return self._basis_cache[key]

    def spreads(self, first: bool) -> dict:
        """The spreads of the first (``first=True``) or second warp: ``im1_multiplier`` scales the first's TPS."""
        a = self.im1_multiplier if first else 1.0
        return dict(warpsd_all=a * self.warpsd_all, warpsd_subset=a * self.warpsd_subset, transsd=self.transsd,
                    scalesd=self.scalesd, rotsd=self.rotsd)

    def sample_weights(self, batch: int, generator: Optional[torch.Generator] = None,
                       first: bool = True) -> torch.Tensor:
        """``(B, K + 3, 2)`` float64 CPU parameters of one random warp per image (see :meth:`spreads`)."""
        return random_tps_weights(batch, self.num_control, generator=generator, **self.spreads(first))

    def __call__(self, images: torch.Tensor, keypoints: Optional[torch.Tensor] = None, *,
                 generator: Optional[torch.Generator] = None) -> WarpedPairs:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (B, C, H, W) tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be floating point, got {images.dtype}")
        batch, _, height, width = images.shape
        crop = self.crop
        if height - 2 * crop < 2 or width - 2 * crop < 2:
            raise ValueError(f"crop={crop} leaves nothing of {height}x{width} images")
        if keypoints is not None and (keypoints.dim() != 3 or keypoints.shape[0] != batch or keypoints.shape[2] != 2):
            raise ValueError(f"keypoints must be (B={batch}, P, 2) pixel (x, y), got {tuple(keypoints.shape)}")

        device = images.device
        weights1 = self.sample_weights(batch, generator, first=True)
        weights2 = self.sample_weights(batch, generator, first=False)
        # Grids are computed in float32 (float64 for float64 images) where the images are.
        coord_dtype = accumulate_dtype(images.dtype)
        w1 = weights1.to(device=device, dtype=coord_dtype)
        w2 = weights2.to(device=device, dtype=coord_dtype)
        control, basis = self._basis(height, width, device, coord_dtype)
        grid1 = tps_grid(w1, height, width, control, basis)
        grid2 = tps_grid(w2, height, width, control, basis)

        sample = dict(mode="bilinear", padding_mode="zeros", align_corners=True)
        x_prime = F.grid_sample(images, grid1.to(images.dtype), **sample)
        x = F.grid_sample(x_prime, grid2.to(images.dtype), **sample)

        kp_x = kp_x_prime = None
        if keypoints is not None:
            kp = normalize_pixels(keypoints.to(device=device, dtype=coord_dtype), height, width)
            kp1 = invert_tps_points(kp, w1, control, height, width)
            kp2 = invert_tps_points(kp1, w2, control, height, width)
            kp_x_prime = unnormalize_pixels(kp1, height, width) - crop
            kp_x = unnormalize_pixels(kp2, height, width) - crop

        grid = grid2
        if crop:
            x = x[:, :, crop:height - crop, crop:width - crop]
            x_prime = x_prime[:, :, crop:height - crop, crop:width - crop]
            pixels = unnormalize_pixels(grid2, height, width)[:, crop:height - crop, crop:width - crop] - crop
            grid = normalize_pixels(pixels, height - 2 * crop, width - 2 * crop)
        return WarpedPairs(x.contiguous(), x_prime.contiguous(), grid.contiguous(), kp_x, kp_x_prime)
