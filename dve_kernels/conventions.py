"""The original DVE repository's data conventions, as small pure-PyTorch helpers.

Everything here is ``O(B·(N + M)·C)`` in memory: these helpers turn the original's
``(feats, meta)`` arguments into the flat tensors that the fused ops take, so that
the dense reference (``dve_kernels.reference``) and the fused paths (``dve_kernels.compat``)
share one statement of the conventions (docs/contract.md section 2):

- pairs are interleaved: ``x = feats[0::2]``, ``x' = feats[1::2]``;
- ``grid`` is normalised ``(x, y)`` in ``[-1, 1]``, align-corners:
  ``pixel = (g + 1) / 2 · (W_in - 1)``;
- ``stride = H_in // H``; source pixel ``(i, j)`` has ``g(u) = unnormalised grid[b, i·stride, j·stride]``
  and target pixel ``(i, j)`` sits at ``(j·stride, i·stride)``;
- embeddings are L2-normalised over channels and multiplied by 20 (``normalize_vectors=True``);
- the auxiliary images of pair ``b`` are ``x[(b+1) % B], ..., x[(b+k) % B]``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .precision import WIDE, accumulate_dtype

#: The original repository multiplies every L2-normalised embedding by this constant.
NORMALIZED_NORM = 20.0


def unpack_feats(feats) -> torch.Tensor:
    """``feats`` as the original code receives it: a tensor, or a tuple/list whose first item is one."""
    if isinstance(feats, (tuple, list)):
        return feats[0]
    return feats


def grid_stride(grid_hw: Sequence[int], feat_hw: Sequence[int]) -> int:
    """The original's sub-sampling stride, ``H_in // H``."""
    return grid_hw[0] // feat_hw[0]


def grid_coordinates(grid: torch.Tensor, feat_hw: Sequence[int], dtype: torch.dtype):
    """Source and target pixel positions, in input pixels, for feature maps of size ``feat_hw``.

    Args:
        grid: ``(B, H_in, W_in, 2)`` normalised align-corners ``(x, y)``.
        feat_hw: ``(H, W)`` of the feature maps.
        dtype: floating dtype of the returned coordinates.

    Returns:
        ``src_xy`` ``(B, H·W, 2)``: ``g(u)`` for every source feature pixel, and
        ``tgt_xy`` ``(H·W, 2)``: ``(j·stride, i·stride)`` for every target feature pixel.
    """
    batch, height_in, width_in, _ = grid.shape
    height, width = feat_hw
    stride = grid_stride((height_in, width_in), (height, width))
    grid = grid.to(dtype)
    # Same operation order as the original's ``tps.grid_unnormalize``.
    constants = torch.tensor([width_in - 1.0, height_in - 1.0], dtype=dtype, device=grid.device)
    pixels = (grid + 1.0) / 2.0 * constants
    src_xy = pixels[:, ::stride, ::stride, :].reshape(batch, height * width, 2)
    ys = torch.arange(0, height_in, stride, dtype=dtype, device=grid.device)
    xs = torch.arange(0, width_in, stride, dtype=dtype, device=grid.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    tgt_xy = torch.stack((xx, yy), dim=-1).reshape(height * width, 2)
    return src_xy.contiguous(), tgt_xy.contiguous()


def flatten_maps(maps: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` feature maps to ``(B, H·W, C)`` embeddings (one row per pixel)."""
    batch, channels = maps.shape[:2]
    return maps.reshape(batch, channels, -1).transpose(1, 2)


#: Rows per chunk of the float64 normalisation: its temporaries stay at NORMALIZE_CHUNK x C float64 values.
NORMALIZE_CHUNK = 8192


class _Normalize(torch.autograd.Function):
    """``20 · x / ||x||`` over the last axis, computed in float64 (precision.WIDE) and returned in ``out_dtype`` (rounded once
    if narrower), in chunks of rows, saving only ``x`` and the ``(..., 1)`` norms: no float64 copy of ``x`` is
    ever whole or kept for the backward."""

    @staticmethod
    def forward(ctx, x, out_dtype):
        rows = x.reshape(-1, x.shape[-1])
        out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
        norm = torch.empty((rows.shape[0], 1), dtype=WIDE, device=x.device)
        for start in range(0, rows.shape[0], NORMALIZE_CHUNK):
            part = rows[start:start + NORMALIZE_CHUNK].to(WIDE)
            n = torch.linalg.vector_norm(part, dim=-1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
            norm[start:start + NORMALIZE_CHUNK] = n
            out[start:start + NORMALIZE_CHUNK] = part * (NORMALIZED_NORM / n)
        ctx.save_for_backward(x, norm)
        return out.reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):
        x, norm = ctx.saved_tensors
        rows, grads = x.reshape(-1, x.shape[-1]), grad.reshape(-1, x.shape[-1])
        out = torch.empty_like(rows)
        for start in range(0, rows.shape[0], NORMALIZE_CHUNK):
            n = norm[start:start + NORMALIZE_CHUNK]
            unit = rows[start:start + NORMALIZE_CHUNK].to(WIDE) / n
            g = grads[start:start + NORMALIZE_CHUNK].to(WIDE)
            # d(20 x/|x|) = 20/|x| (I - u u^T): the radial part of the upstream gradient removed
            out[start:start + NORMALIZE_CHUNK] = (g - unit * (unit * g).sum(-1, keepdim=True)) * (NORMALIZED_NORM / n)
        return out.reshape(x.shape), None


def normalize_embeddings(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """L2-normalise over the last (channel) axis and multiply by 20, as ``F.normalize(f, dim=0) * 20``.

    Computed in float64 (:data:`~dve_kernels.precision.WIDE`, a cheap ``O(N·C)`` step) and returned in ``dtype``
    (default: ``x``'s), rounded at most once. Normalising in
    float32 leaves each vector's norm off by ~1e-7, which scales every logit of its row (~400) by as much: with a
    peaked softmax that moved the DVE gradient by ~3e-5 of its max-norm, eight times the whole dense float32
    computation's error on some inputs. The float64 copies are temporary: only ``x`` and the norms are saved for
    the backward.
    """
    dtype = x.dtype if dtype is None else dtype
    if x.dtype == WIDE:
        return (F.normalize(x, p=2, dim=-1) * NORMALIZED_NORM).to(dtype)
    return _Normalize.apply(x, dtype)


def auxiliary_indices(batch: int, num_aux: int, device=None) -> torch.Tensor:
    """``(B, num_aux)`` indices of the auxiliary images of each pair: ``(b + 1) % B, ..., (b + k) % B``."""
    offsets = torch.arange(1, num_aux + 1, device=device)
    return (torch.arange(batch, device=device)[:, None] + offsets[None, :]) % batch


def gather_auxiliary(src: torch.Tensor, num_aux: int) -> torch.Tensor:
    """The auxiliary set of every pair, concatenated: ``(B, N, C)`` -> ``(B, num_aux·N, C)``.

    All auxiliary images of a pair take part in one joint softmax (paper section 3.4).
    """
    batch, n, channels = src.shape
    index = auxiliary_indices(batch, num_aux, device=src.device)
    return src[index].reshape(batch, num_aux * n, channels)


def prepare_pairs(feats, grid: torch.Tensor, normalize_vectors: bool, dtype: torch.dtype | None = None):
    """Unpack the original's arguments into flat tensors.

    Returns:
        ``src`` ``(B, N, C)``, ``tgt`` ``(B, M, C)`` (normalised x20 when asked) in ``dtype`` (default: the
        features'; see :func:`dve_kernels.precision.kernel_dtype`), ``src_xy`` ``(B, N, 2)`` and ``tgt_xy`` ``(M, 2)`` in input pixels.
    """
    feats = unpack_feats(feats)
    dtype = feats.dtype if dtype is None else dtype
    grid = grid.to(feats.device)  # the original moves the grid to the features' device
    src = flatten_maps(feats[0::2])
    tgt = flatten_maps(feats[1::2])
    if normalize_vectors:
        src = normalize_embeddings(src, dtype)
        tgt = normalize_embeddings(tgt, dtype)
    else:
        src, tgt = src.to(dtype), tgt.to(dtype)
    src_xy, tgt_xy = grid_coordinates(grid, feats.shape[-2:], accumulate_dtype(dtype))
    return src, tgt, src_xy, tgt_xy
