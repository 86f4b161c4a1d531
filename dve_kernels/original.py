"""A faithful re-implementation of the original DVE repository's losses, for comparison only.

The original (``model/loss.py`` of jamt9000/DVE) loops over pairs in Python, builds the ``H x W x h x w``
correlation and distance tensors of every pair, and for DVE multiplies the softmax by the auxiliary embeddings
into a ``C x H x W x h x w`` tensor before summing. This module keeps that structure (and its memory use) so
tests can check that the drop-in functions give the same numbers and benchmarks can show what users switch from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unnormalised_grids(grid, height, width, device):
    """Per-pair g(u) sub-sampled to the feature grid, and the input-pixel positions of every target pixel."""
    height_in, width_in = grid.shape[1:3]
    stride = height_in // height
    grid = grid.to(device)
    constants = torch.tensor([width_in - 1.0, height_in - 1.0], dtype=grid.dtype, device=device)
    g_u = ((grid + 1.0) / 2.0 * constants)[:, ::stride, ::stride, :]
    ys = torch.linspace(0, height_in - 1, height_in, device=device)
    xs = torch.linspace(0, width_in - 1, width_in, device=device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    positions = torch.stack((xx, yy), dim=-1)[::stride, ::stride, :].to(grid.dtype)
    return g_u, positions


def _distances(g_u_b, positions, pow):
    with torch.no_grad():
        diff = g_u_b[:, :, None, None, :] - positions[None, None, :, :, :]
        return (diff * diff).sum(4).sqrt().pow(pow)


def dense_correlation_loss(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True):
    feats = feats[0] if isinstance(feats, (tuple, list)) else feats
    source, target = feats[0::2], feats[1::2]
    batch, channels, height, width = source.shape
    g_u, positions = _unnormalised_grids(meta["grid"], height, width, feats.device)
    loss = 0.0
    for b in range(batch):
        f1 = source[b].reshape(channels, height * width)
        f2 = target[b].reshape(channels, height * width)
        if normalize_vectors:
            f1 = F.normalize(f1, p=2, dim=0) * 20
            f2 = F.normalize(f2, p=2, dim=0) * 20
        corr = torch.matmul(f1.t(), f2).reshape(height, width, height, width)
        probabilities = F.softmax(corr.reshape(height, width, -1), dim=2).reshape(corr.shape)
        loss = loss + (_distances(g_u[b], positions, pow) * probabilities).sum()
    return loss / (height * width * batch)


def dense_correlation_loss_dve(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True):
    feats = feats[0] if isinstance(feats, (tuple, list)) else feats
    source, target = feats[0::2], feats[1::2]
    batch, channels, height, width = source.shape
    g_u, positions = _unnormalised_grids(meta["grid"], height, width, feats.device)
    loss = 0.0
    for b in range(batch):
        f1 = source[b].reshape(channels, height * width)
        f2 = target[b].reshape(channels, height * width)
        fa = source[(b + 1) % batch].reshape(channels, height * width)
        if normalize_vectors:
            f1 = F.normalize(f1, p=2, dim=0) * 20
            f2 = F.normalize(f2, p=2, dim=0) * 20
            fa = F.normalize(fa, p=2, dim=0) * 20
        corr = torch.matmul(f1.t(), fa).reshape(height, width, height, width)
        probabilities = F.softmax(corr.reshape(height, width, -1), dim=2).reshape(corr.shape)
        # The C x H x W x h x w product of the original: the memory wall this project removes.
        weighted = probabilities[None] * fa.reshape(-1, 1, 1, height, width)
        f1_via_fa = weighted.sum((3, 4)).reshape(channels, height * width)
        corr2 = torch.matmul(f1_via_fa.t(), f2).reshape(height, width, height, width)
        probabilities2 = F.softmax(corr2.reshape(height, width, -1), dim=2).reshape(corr2.shape)
        loss = loss + (_distances(g_u[b], positions, pow) * probabilities2).float().sum()
    return loss / (height * width * batch)
