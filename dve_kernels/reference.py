"""Dense PyTorch implementations: docs/contract.md sections 1-3 in code.

These build the full ``N x M`` matching matrices, exactly like the original DVE repository
(batched instead of a Python loop over pairs), and serve as the reference every fused backend is
tested against. Signatures match the public API; ``backend`` is accepted and must be
``"reference"`` or ``"auto"``.
"""

from __future__ import annotations

import torch

from . import _validation as validation
from .conventions import gather_auxiliary, prepare_pairs
from .precision import accumulate_dtype


def _check_backend(backend) -> None:
    validation.check_choice("backend", backend, ("reference", "auto"))


def exchange(query: torch.Tensor, aux: torch.Tensor, *, scale: float = 1.0, backend: str = "reference"):
    """Exchange reconstruction (paper eq. 5), dense.

    ``out_u = sum_w softmax_w(scale · <query_u, aux_w>) · aux_w``.

    Args:
        query: ``(B, N, C)``.
        aux: ``(B, M, C)``, keys and values at once.

    Returns:
        ``(B, N, C)``.
    """
    scale = validation.check_exchange(query, aux, scale, "reference")
    _check_backend(backend)
    return exchange_rows(query, aux, scale)


def exchange_rows(query: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`exchange` without validation: the dense ``(B, N, M)`` softmax, then its product with ``aux``."""
    logits = scale * torch.bmm(query, aux.transpose(1, 2))  # (B, N, M)
    return torch.bmm(torch.softmax(logits, dim=-1), aux)


def pairwise_distances(src_xy: torch.Tensor, tgt_xy: torch.Tensor, pow: float) -> torch.Tensor:
    """``||src_xy_u - tgt_xy_v||^pow``, ``(B, N, M)``, as the original computes it (no gradient)."""
    if tgt_xy.dim() == 2:
        tgt_xy = tgt_xy.unsqueeze(0)
    with torch.no_grad():
        diff = src_xy[:, :, None, :] - tgt_xy[:, None, :, :]
        return (diff * diff).sum(-1).sqrt().pow(pow)


def warp_loss_rows(src, tgt, src_xy, tgt_xy, pow: float, scale: float) -> torch.Tensor:
    """``L_u = sum_v p(v|u) ||g(u) - v||^pow`` for every source pixel: ``(B, N)``, float32 (float64 for float64
    features) like every backend. Inputs are not validated."""
    logits = scale * torch.bmm(src, tgt.transpose(1, 2))  # (B, N, M)
    probabilities = torch.softmax(logits, dim=-1)
    # Distances and the expectation in float32 at least (float64 for float64 features), as every fused backend
    # returns them: a 16-bit distance overflows (pow = 2 beyond 256 px in float16).
    side = accumulate_dtype(src.dtype)
    distances = pairwise_distances(src_xy.to(side), tgt_xy.to(side), pow)
    return (probabilities.to(side) * distances).sum(-1)


def reduce_rows(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    """``"mean"`` divides the total by ``B·N`` (the original's ``B·H·W``); ``"none"`` keeps ``(B, N)``."""
    if reduction == "mean":
        return rows.sum() / rows.numel()
    if reduction == "sum":
        return rows.sum()
    return rows


def warp_loss(src, tgt, src_xy, tgt_xy, *, pow: float = 0.5, scale: float = 1.0, reduction: str = "mean",
              backend: str = "reference"):
    """Warp loss (paper eq. 3), dense.

    Args:
        src: ``(B, N, C)`` source embeddings.
        tgt: ``(B, M, C)`` target embeddings.
        src_xy: ``(B, N, 2)`` where each source pixel truly went, ``g(u)``, in pixels.
        tgt_xy: ``(M, 2)`` or ``(B, M, 2)`` target pixel positions.

    Returns:
        A scalar for ``"mean"``/``"sum"``, the ``(B, N)`` expected distances for ``"none"``.
    """
    pow, scale = validation.check_warp_loss(src, tgt, src_xy, tgt_xy, pow, scale, reduction, "reference")
    _check_backend(backend)
    return reduce_rows(warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, scale), reduction)


def _prepare(feats, meta, normalize_vectors):
    grid = validation.check_meta(meta)
    validation.check_feats_and_grid(feats, grid)
    return prepare_pairs(feats, grid, normalize_vectors)


def dense_correlation_loss(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True, *, backend="reference"):
    """The original repository's warp loss, dense: ``feats`` ``(2B, C, H, W)``, ``meta['grid']`` ``(B, H_in, W_in, 2)``."""
    _check_backend(backend)
    src, tgt, src_xy, tgt_xy = _prepare(feats, meta, normalize_vectors)
    pow = validation.check_real("pow", pow, positive=True)
    return reduce_rows(warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, 1.0), "mean")


def dense_correlation_loss_dve(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True, *, num_aux=1,
                               backend="reference"):
    """The original repository's DVE loss, dense: exchange through ``num_aux`` auxiliary images, then the warp loss."""
    _check_backend(backend)
    src, tgt, src_xy, tgt_xy = _prepare(feats, meta, normalize_vectors)
    pow = validation.check_real("pow", pow, positive=True)
    num_aux = validation.check_num_aux(num_aux, src.shape[0])
    aux = gather_auxiliary(src, num_aux)
    reconstructed = exchange_rows(src, aux, 1.0)
    return reduce_rows(warp_loss_rows(reconstructed, tgt, src_xy, tgt_xy, pow, 1.0), "mean")
