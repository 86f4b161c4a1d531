"""Independent loop implementations of SPEC.md sections 1-2, the judges of ``dve_kernels.reference``.

Written straight from the equations, one source pixel at a time, with none of the batched matrices, helpers
or conventions of the package (no ``reference``, ``conventions`` or ``functional`` import): when a test compares
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
            logits = torch.stack([scale * torch.dot(query[b, u], aux[b, w]) for w in range(aux.shape[1])])
            weights = torch.softmax(logits, 0)
            out_b.append((weights[:, None] * aux[b]).sum(0))
        rows.append(torch.stack(out_b))
    return torch.stack(rows)


def warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, scale=1.0):
    """Eq. 3 row by row: ``L[b, u] = sum_v softmax_v(scale <src[b, u], tgt[b, v]>) ||src_xy[b, u] - tgt_xy_v||^pow``."""
    if tgt_xy.dim() == 2:
        tgt_xy = tgt_xy.expand(src.shape[0], -1, -1)
    rows = []
    for b in range(src.shape[0]):
        out_b = []
        for u in range(src.shape[1]):
            logits = torch.stack([scale * torch.dot(src[b, u], tgt[b, v]) for v in range(tgt.shape[1])])
            p = torch.softmax(logits, 0)
            total = src.new_zeros(())
            for v in range(tgt.shape[1]):
                dx = float(src_xy[b, u, 0] - tgt_xy[b, v, 0])
                dy = float(src_xy[b, u, 1] - tgt_xy[b, v, 1])
                total = total + p[v] * math.sqrt(dx * dx + dy * dy) ** pow
            out_b.append(total)
        rows.append(torch.stack(out_b))
    return torch.stack(rows)


def dense_correlation_loss(feats, grid, pow=0.5, normalize_vectors=True, num_aux=0):
    """The original repository's losses from ``(feats, grid)`` with explicit loops over pairs and pixels.

    ``feats``: ``(2B, C, H, W)``, pairs interleaved; ``grid``: ``(B, H_in, W_in, 2)`` normalised align-corners
    ``(x, y)`` of each input pixel of ``x`` in ``x'``, sub-sampled at ``stride = H_in // H``.
    ``num_aux = 0`` is the warp loss (eq. 3); ``num_aux >= 1`` first rebuilds every source vector from the next
    ``num_aux`` images of the batch (one joint softmax, eq. 5-6).
    """
    x, x_warped = feats[0::2], feats[1::2]
    batch, channels, height, width = x.shape
    height_in, width_in = grid.shape[1:3]
    stride = height_in // height

    def embedding(maps, b, i, j):
        e = maps[b, :, i, j]
        return e / e.norm().clamp_min(1e-12) * 20 if normalize_vectors else e

    pixels = [(i, j) for i in range(height) for j in range(width)]
    total = feats.new_zeros(())
    for b in range(batch):
        for (i, j) in pixels:
            a_u = embedding(x, b, i, j)
            if num_aux:
                aux = [embedding(x, (b + k) % batch, i2, j2) for k in range(1, num_aux + 1) for (i2, j2) in pixels]
                logits = torch.stack([a_u @ alpha for alpha in aux])
                weights = torch.softmax(logits, 0)
                a_u = sum(w * alpha for w, alpha in zip(weights, aux))
            gx = (grid[b, i * stride, j * stride, 0] + 1) / 2 * (width_in - 1)
            gy = (grid[b, i * stride, j * stride, 1] + 1) / 2 * (height_in - 1)
            logits = torch.stack([a_u @ embedding(x_warped, b, i2, j2) for (i2, j2) in pixels])
            p = torch.softmax(logits, 0)
            for (i2, j2), p_v in zip(pixels, p):
                distance = math.sqrt(float(gx - j2 * stride) ** 2 + float(gy - i2 * stride) ** 2)
                total = total + p_v * distance ** pow
    return total / (batch * height * width)
