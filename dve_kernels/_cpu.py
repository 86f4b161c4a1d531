"""The ``"cpu"`` backend: the compiled C++ kernels of ``dve_kernels._C`` behind the backend seam.

Importing this module raises :class:`ImportError` (with the command that builds the extension) when
``dve_kernels._C`` is missing; the rest of the package imports without it.

``dve_kernels._C`` registers four ops with ``TORCH_LIBRARY`` (schemas in ``python/bindings.cpp``)::

    torch.ops.dve_kernels.exchange_fwd_cpu(query, aux, scale) -> (out, lse)   # lse (B, N) float64
    torch.ops.dve_kernels.exchange_bwd_cpu(grad_out, query, aux, out, lse, scale) -> (grad_query, grad_aux)
    torch.ops.dve_kernels.warp_loss_fwd_cpu(src, tgt, src_xy, tgt_xy, pow, scale) -> (rows, lse)   # lse float64
    torch.ops.dve_kernels.warp_loss_bwd_cpu(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale)
        -> (grad_src, grad_tgt)

This module adds their fake (meta) kernels and autograd formulas, so ``torch.compile(fullgraph=True)``,
``torch.library.opcheck`` and ``backward()`` work, and exports the two seam functions of
:mod:`dve_kernels.functional`: :func:`exchange` and :func:`warp_loss_rows`.
"""

from __future__ import annotations

import torch

BUILD_HINT = "the C++ extension is not built: run `pip install --no-build-isolation -e .`"

try:
    from . import _C
except ImportError as _error:  # not built, built for another torch/python, or a bad DVE_KERNELS_ISA
    raise ImportError(f"dve_kernels._C cannot be imported ({_error}); {BUILD_HINT}") from _error

#: The instruction set the kernels run with here: "avx512", "avx2" or "generic" (DVE_KERNELS_ISA forces one).
KERNEL_ISA: str = _C.kernel_isa

_ops = torch.ops.dve_kernels


def is_available() -> bool:
    """Whether the compiled CPU kernels can run (always true once this module imported)."""
    return True


def _side_dtype(features: torch.Tensor) -> torch.dtype:
    """dtype of coordinates, rows and grad_rows: float64 for float64 features, else float32 (lse: always float64)."""
    return torch.float64 if features.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------------------------
# fake kernels: shapes and dtypes only (torch.compile, meta tensors, opcheck)


@torch.library.register_fake("dve_kernels::exchange_fwd_cpu")
def _exchange_fwd_fake(query, aux, scale):
    return torch.empty_like(query), query.new_empty(query.shape[:2], dtype=torch.float64)


@torch.library.register_fake("dve_kernels::exchange_bwd_cpu")
def _exchange_bwd_fake(grad_out, query, aux, out, lse, scale):
    return torch.empty_like(query), torch.empty_like(aux)


@torch.library.register_fake("dve_kernels::warp_loss_fwd_cpu")
def _warp_loss_fwd_fake(src, tgt, src_xy, tgt_xy, pow, scale):
    shape = src.shape[:2]
    return src.new_empty(shape, dtype=_side_dtype(src)), src.new_empty(shape, dtype=torch.float64)


@torch.library.register_fake("dve_kernels::warp_loss_bwd_cpu")
def _warp_loss_bwd_fake(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale):
    return torch.empty_like(src), torch.empty_like(tgt)


# ---------------------------------------------------------------------------------------------------------------
# autograd: the forward ops save what the fused backward recomputes the probabilities from (lse, never
# an N x M matrix). lse is an auxiliary output without a gradient; the backward ops are not differentiable.


def _exchange_setup_context(ctx, inputs, output):
    query, aux, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, aux, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _exchange_backward(ctx, grad_out, grad_lse):
    query, aux, out, lse = ctx.saved_tensors
    if grad_out is None:
        return None, None, None
    grad_query, grad_aux = _ops.exchange_bwd_cpu(grad_out.contiguous(), query, aux, out, lse, ctx.scale)
    return grad_query, grad_aux, None


torch.library.register_autograd(
    "dve_kernels::exchange_fwd_cpu", _exchange_backward, setup_context=_exchange_setup_context
)


def _warp_loss_setup_context(ctx, inputs, output):
    src, tgt, src_xy, tgt_xy, pow, scale = inputs
    rows, lse = output
    ctx.save_for_backward(src, tgt, src_xy, tgt_xy, rows, lse)
    ctx.pow = pow
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _warp_loss_backward(ctx, grad_rows, grad_lse):
    src, tgt, src_xy, tgt_xy, rows, lse = ctx.saved_tensors
    if grad_rows is None:
        return None, None, None, None, None, None
    grad_rows = grad_rows.to(rows.dtype).contiguous()
    grad_src, grad_tgt = _ops.warp_loss_bwd_cpu(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, ctx.pow, ctx.scale)
    return grad_src, grad_tgt, None, None, None, None


torch.library.register_autograd(
    "dve_kernels::warp_loss_fwd_cpu", _warp_loss_backward, setup_context=_warp_loss_setup_context
)


# ---------------------------------------------------------------------------------------------------------------
# the backend seam (dve_kernels.functional): validated, contiguous CPU tensors in


def exchange(query: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
    """``out_u = sum_w softmax_w(scale · <query_u, aux_w>) · aux_w``.

    Args:
        query: ``(B, N, C)``; aux: ``(B, M, C)``, same dtype (float32, float64, bfloat16, float16), CPU.
        scale: multiplies the logits.

    Returns:
        ``(B, N, C)`` in the dtype of ``query``; differentiable in ``query`` and ``aux`` (keys and values).
    """
    out, _ = _ops.exchange_fwd_cpu(query, aux, float(scale))
    return out


def warp_loss_rows(src: torch.Tensor, tgt: torch.Tensor, src_xy: torch.Tensor, tgt_xy: torch.Tensor,
                   pow: float, scale: float) -> torch.Tensor:
    """``L_u = sum_v softmax_v(scale · <src_u, tgt_v>) · ||src_xy_u - tgt_xy_v||^pow``.

    Args:
        src: ``(B, N, C)``; tgt: ``(B, M, C)``, same dtype, CPU.
        src_xy: ``(B, N, 2)``; tgt_xy: ``(B, M, 2)``: pixels, float64 for float64 features else float32.
        pow: exponent of the distance (> 0); scale: multiplies the logits.

    Returns:
        ``(B, N)`` expected distances, float64 for float64 features else float32; differentiable in
        ``src`` and ``tgt`` (not in the coordinates).
    """
    rows, _ = _ops.warp_loss_fwd_cpu(src, tgt, src_xy, tgt_xy, float(pow), float(scale))
    return rows
