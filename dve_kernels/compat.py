"""Drop-in replacements for the original DVE repository's losses (``model/loss.py``).

Same signatures, same numbers; the fused backends never build the ``H·W x H·W`` matrices, so
``fold_corr`` is accepted and changes nothing. Swap::

    from model.loss import dense_correlation_loss_dve      # before
    from dve_kernels import dense_correlation_loss_dve     # after
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as validation
from . import functional, reference
from .conventions import gather_auxiliary, prepare_pairs
from .precision import accumulate_dtype, kernel_dtype


def _loss(feats, grid, pow, normalize_vectors, dve, num_aux, backend, grid_name="meta['grid']"):
    """The loss of the original's ``(feats, grid)``: validated and resolved once, here; then unpacked and
    normalised (in float64, rounded once to the kernels' dtype: :mod:`dve_kernels.precision`), exchanged when
    ``dve``, matched. Every backend computes in the features' dtype."""
    feats = validation.check_feats_and_grid(feats, grid, grid_name=grid_name)
    pow = validation.check_real("pow", pow, positive=True)
    validation.check_choice("backend", backend, validation.BACKENDS)
    validation.check_channels("feats", feats, backend, channel_dim=1)
    if dve:
        num_aux = validation.check_num_aux(num_aux, feats.shape[0] // 2)
    backend = functional.resolve_backend(backend, feats.device)
    src, tgt, src_xy, tgt_xy = prepare_pairs(feats, grid, normalize_vectors, kernel_dtype(feats.dtype, backend))
    if dve:
        src = functional.exchange_resolved(src, gather_auxiliary(src, num_aux), 1.0, backend)
    rows = functional.warp_loss_rows_resolved(src, tgt, src_xy, tgt_xy, pow, 1.0, backend)
    return reference.reduce_rows(rows, "mean").to(accumulate_dtype(feats.dtype))


def dense_correlation_loss(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True, *, backend="auto"):
    """The warp loss of the original repository (paper eq. 3), fused.

    Args:
        feats: ``(2B, C, H, W)`` embeddings with pairs interleaved (``x = feats[0::2]``, ``x' = feats[1::2]``),
            or a tuple/list whose first element is that tensor.
        meta: a mapping with ``'grid'``: ``(B, H_in, W_in, 2)``, for each pixel of ``x`` where it lies in ``x'``,
            normalised align-corners ``(x, y)``; ``stride = H_in // H``. It is moved to the features' device.
        pow: exponent of the pixel distance.
        fold_corr: ignored (every fused path is memory-safe).
        normalize_vectors: L2-normalise every embedding over channels and multiply by 20.
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns:
        A scalar: the mean over pairs and source pixels (the original's division by ``B·H·W``).
    """
    return _loss(feats, validation.check_meta(meta), pow, normalize_vectors, False, 1, backend)


def dense_correlation_loss_dve(feats, meta, pow=0.5, fold_corr=False, normalize_vectors=True, *, num_aux=1,
                               backend="auto"):
    """The DVE loss of the original repository (paper eq. 6), fused.

    Each source embedding is first rebuilt from the embeddings of ``num_aux`` other images
    (``x[(b+1) % B], ..., x[(b+k) % B]``, one joint softmax), then matched against its warp.
    Arguments as :func:`dense_correlation_loss`; ``num_aux`` is new (the original always used 1).

    Returns:
        A scalar, the same value as the original's ``dense_correlation_loss_evc``.
    """
    return _loss(feats, validation.check_meta(meta), pow, normalize_vectors, True, num_aux, backend)


class DVELoss(nn.Module):
    """The DVE (or plain warp) loss as a module: ``loss = DVELoss()(feats, grid)``.

    Args:
        pow: exponent of the pixel distance.
        normalize_vectors: L2-normalise embeddings and multiply by 20.
        dve: rebuild source embeddings from auxiliary images first (eq. 6); ``False`` gives eq. 3.
        num_aux: number of auxiliary images per pair.
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    ``forward(feats, grid)``: ``feats`` ``(2B, C, H, W)`` interleaved pairs, ``grid`` ``(B, H_in, W_in, 2)``.
    """

    def __init__(self, pow: float = 0.5, normalize_vectors: bool = True, dve: bool = True, num_aux: int = 1,
                 backend: str = "auto"):
        super().__init__()
        self.pow = validation.check_real("pow", pow, positive=True)
        self.normalize_vectors = bool(normalize_vectors)
        self.dve = bool(dve)
        self.num_aux = validation.check_num_aux(num_aux)  # against the batch size at each call
        self.backend = validation.check_choice("backend", backend, validation.BACKENDS)

    def forward(self, feats, grid: torch.Tensor) -> torch.Tensor:
        return _loss(feats, grid, self.pow, self.normalize_vectors, self.dve, self.num_aux, self.backend,
                     grid_name="grid")

    def extra_repr(self) -> str:
        return (f"pow={self.pow}, normalize_vectors={self.normalize_vectors}, dve={self.dve}, "
                f"num_aux={self.num_aux}, backend={self.backend!r}")
