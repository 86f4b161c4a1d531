"""Independent loop implementations of docs/contract.md sections 1-2, the judges of ``dve_kernels.reference``.

Written straight from the equations, one source pixel at a time (a softmax over one row, distances in Python
floats), with none of the batched matrices, helpers or conventions of the package (no ``reference``, ``conventions`` or ``functional`` import): when a test compares
a backend (``"reference"`` included) with these, it compares two independent computations. Slow; keep inputs tiny.
"""

from __future__ import annotations

import math

import torch


def exchange(query, aux, scale=1.0):
    """Eq. 5 row by row: ``out[b, u] = sum_w softmax_w(scale <query[b, u], aux[b, w]>) aux[b, w]``."""
    rows = []
    for b in range(query.shape[0]):
        out_b = []
        for u in range(query.shape[1]):
            weights = torch.softmax(scale * (aux[b] @ query[b, u]), 0)
            out_b.append(weights @ aux[b])
        rows.append(torch.stack(out_b))
    return torch.stack(rows)


def _distances(point, targets, pow):
    """``||point - t||^pow`` for every target ``t``, in Python floats (no gradient flows through positions)."""
    x, y = float(point[0]), float(point[1])
    values = [math.sqrt((x - float(tx)) ** 2 + (y - float(ty)) ** 2) ** pow for tx, ty in targets]
    return torch.tensor(values, dtype=torch.float64)


def warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, scale=1.0):
    """Eq. 3 row by row: ``L[b, u] = sum_v softmax_v(scale <src[b, u], tgt[b, v]>) ||src_xy[b, u] - tgt_xy_v||^pow``."""
    if tgt_xy.dim() == 2:
        tgt_xy = tgt_xy.expand(src.shape[0], -1, -1)
    rows = []
    for b in range(src.shape[0]):
        targets = tgt_xy[b].tolist()
        out_b = []
        for u in range(src.shape[1]):
            p = torch.softmax(scale * (tgt[b] @ src[b, u]), 0)
            out_b.append((p * _distances(src_xy[b, u], targets, pow).to(p.dtype)).sum())
        rows.append(torch.stack(out_b))
    return torch.stack(rows)


def dense_correlation_loss(feats, grid, pow=0.5, normalize_vectors=True, num_aux=0):
    """The original repository's losses from ``(feats, grid)`` with explicit loops over pairs and source pixels.

    ``feats``: ``(2B, C, H, W)``, pairs interleaved; ``grid``: ``(B, H_in, W_in, 2)`` normalised align-corners
    ``(x, y)`` of each input pixel of ``x`` in ``x'``, sub-sampled at ``stride = H_in // H``.
    ``num_aux = 0`` is the warp loss (eq. 3); ``num_aux >= 1`` first rebuilds every source vector from the next
    ``num_aux`` images of the batch (one joint softmax, eq. 5-6).
    """
    x, x_warped = feats[0::2], feats[1::2]
    batch, channels, height, width = x.shape
    height_in, width_in = grid.shape[1:3]
    stride = height_in // height
    pixels = [(i, j) for i in range(height) for j in range(width)]
    targets = [(j * stride, i * stride) for (i, j) in pixels]  # input-pixel (x, y) of every target pixel

    def embeddings(maps, b):
        """``(H·W, C)``: one row per pixel, in the order of ``pixels``, x20-normalised if asked."""
        rows = [maps[b, :, i, j] for (i, j) in pixels]
        if normalize_vectors:
            rows = [e / e.norm().clamp_min(1e-12) * 20 for e in rows]
        return torch.stack(rows)

    sources = [embeddings(x, b) for b in range(batch)]
    total = feats.new_zeros(())
    for b in range(batch):
        warped = embeddings(x_warped, b)
        aux = torch.cat([sources[(b + k) % batch] for k in range(1, num_aux + 1)]) if num_aux else None
        for u, (i, j) in enumerate(pixels):
            a_u = sources[b][u]
            if num_aux:
                a_u = torch.softmax(aux @ a_u, 0) @ aux
            g_u = ((grid[b, i * stride, j * stride, 0] + 1) / 2 * (width_in - 1),
                   (grid[b, i * stride, j * stride, 1] + 1) / 2 * (height_in - 1))
            p = torch.softmax(warped @ a_u, 0)
            total = total + (p * _distances(g_u, targets, pow).to(p.dtype)).sum()
    return total / (batch * height * width)
