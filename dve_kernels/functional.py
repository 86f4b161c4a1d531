"""Public functions: validation, backend choice, and the shapes of every tensor.

Every fused backend is the same four ``torch.library`` ops (:mod:`dve_kernels._library`): ``"cpu"`` runs them with
the compiled C++ kernels, ``"triton"`` with the Triton kernels (CUDA tensors; CPU tensors under Triton's
interpreter), and ``"reference"`` is the dense path of :mod:`dve_kernels.reference`. The path from the public
functions down to the ops is plain tensor code, so ``torch.compile(fullgraph=True)`` traces it.
"""

from __future__ import annotations

import sys
import warnings

import torch

from . import _library
from ._env import triton_interpreter_requested
from . import _validation as validation
from . import reference
from .precision import accumulate_dtype

BUILD_HINT = _library.BUILD_HINT


class BackendUnavailableError(RuntimeError):
    """The backend that was asked for cannot run here; the message says why and what to do."""


def cpu_extension_available() -> bool:
    """Whether the compiled C++ kernels (``backend="cpu"``) can run here."""
    return _library.CPU_KERNELS


_fallback_warned = []


def _warn_fallback() -> None:
    if not _fallback_warned:
        _fallback_warned.append(True)
        warnings.warn(f"backend='auto' falls back to the dense 'reference' path: {_library.CPU_KERNELS_ERROR}. It "
                      f"materialises N x M matrices; {BUILD_HINT}.", RuntimeWarning, stacklevel=4)


def _load_triton() -> None:
    try:
        _library.triton_launchers()
    except ImportError as error:  # triton missing, or a kernel module failed to import
        raise BackendUnavailableError(
            f"backend='triton' needs Triton ({error}); install it with `pip install triton`"
        ) from error


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that runs ``backend`` on ``device``: "cpu" (the C++ kernels), "triton" (the Triton
    kernels: CUDA tensors, or CPU tensors in Triton's interpreter) or "reference" (dense);
    a :class:`BackendUnavailableError` says why it cannot run. Meta tensors (shapes only) resolve to a fused
    backend, whose ops run their fake kernels (memory estimates without computing)."""
    if backend == "reference":
        return "reference"
    if device.type == "meta":
        return "triton" if backend == "triton" else "cpu"
    if backend == "auto":
        if device.type == "cuda":
            _load_triton()
            return "triton"
        if device.type == "cpu" and _library.CPU_KERNELS:
            return "cpu"
        _warn_fallback()
        return "reference"
    if backend == "triton":
        if device.type == "cuda":
            _load_triton()
            return "triton"
        if not (device.type == "cpu" and triton_interpreter_requested()):
            raise BackendUnavailableError(
                f"backend='triton' runs CUDA tensors, got tensors on {device}; CPU tensors run only under the Triton "
                f"interpreter (set TRITON_INTERPRET=1 before triton is imported)"
            )
        if "triton" in sys.modules and not triton_interpreter_active():
            raise BackendUnavailableError("TRITON_INTERPRET=1 must be set before triton is imported")
        _load_triton()
        return "triton"
    if device.type != "cpu":
        raise BackendUnavailableError(f"backend='cpu' runs CPU tensors, got tensors on {device}")
    if not _library.CPU_KERNELS:
        raise BackendUnavailableError(f"backend='cpu' needs the compiled C++ kernels: {_library.CPU_KERNELS_ERROR}; "
                                      + BUILD_HINT)
    return "cpu"


def triton_interpreter_active() -> bool:
    """Whether the imported Triton runs kernels in its interpreter (TRITON_INTERPRET was set before its import);
    False when Triton is not imported or not installed."""
    if "triton" not in sys.modules:
        return False
    try:
        from .ops import interpreter_active  # noqa: PLC0415  (imports Triton's kernels: only once Triton is in)
    except ImportError:
        return False
    return interpreter_active()


def _run_ops(backend: str, device: torch.device):
    """The context the ops run in: Triton's interpreter for ``"triton"`` on CPU tensors, else nothing."""
    return _library.interpreting(backend == "triton" and device.type == "cpu")


def _batched_coordinates(xy: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    xy = xy.to(accumulate_dtype(dtype))
    if xy.dim() == 2:
        xy = xy.unsqueeze(0).expand(batch, -1, -1)
    return xy.contiguous()


def exchange_resolved(query: torch.Tensor, aux: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """:func:`exchange` for validated inputs and a resolved ``backend`` (see :func:`resolve_backend`)."""
    if backend == "reference":
        return reference.exchange_rows(query, aux, scale)
    with _run_ops(backend, query.device):
        return _library.dve_ops.exchange_fwd(query, aux, scale)[0]


def warp_loss_rows_resolved(src: torch.Tensor, tgt: torch.Tensor, src_xy: torch.Tensor, tgt_xy: torch.Tensor,
                            pow: float, scale: float, backend: str) -> torch.Tensor:
    """The ``(B, N)`` expected distances of :func:`warp_loss` for validated inputs and a resolved ``backend``."""
    batch = src.shape[0]
    src_xy = _batched_coordinates(src_xy, batch, src.dtype)
    tgt_xy = _batched_coordinates(tgt_xy, batch, src.dtype)
    if backend == "reference":
        return reference.warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, scale)
    with _run_ops(backend, src.device):
        return _library.dve_ops.warp_loss_fwd(src, tgt, src_xy, tgt_xy, pow, scale)[0]


def exchange(query: torch.Tensor, aux: torch.Tensor, *, scale: float = 1.0, backend: str = "auto") -> torch.Tensor:
    """Exchange reconstruction (paper eq. 5): softmax attention with keys = values = ``aux``.

    ``out_u = sum_w softmax_w(scale · <query_u, aux_w>) · aux_w``, without an ``N x M`` matrix on the fused backends.

    Args:
        query: ``(B, N, C)`` float tensor (the source embeddings).
        aux: ``(B, M, C)`` float tensor (all auxiliary pixels of each pair; one joint softmax).
        scale: multiplies the logits.
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns:
        ``(B, N, C)``, the reconstruction, in the dtype of ``query``. Differentiable in ``query`` and ``aux``.
    """
    scale = validation.check_exchange(query, aux, scale, backend)
    return exchange_resolved(query, aux, scale, resolve_backend(backend, query.device))


def warp_loss(src: torch.Tensor, tgt: torch.Tensor, src_xy: torch.Tensor, tgt_xy: torch.Tensor, *,
              pow: float = 0.5, scale: float = 1.0, reduction: str = "mean", backend: str = "auto") -> torch.Tensor:
    """Warp loss (paper eq. 3): the expected distance between where a pixel went and where it matched.

    ``L_u = sum_v softmax_v(scale · <src_u, tgt_v>) · ||src_xy_u - tgt_xy_v||^pow``; no gradient flows
    through the distances.

    Args:
        src: ``(B, N, C)`` source embeddings.
        tgt: ``(B, M, C)`` target embeddings.
        src_xy: ``(B, N, 2)`` ``g(u)``, where each source pixel truly went, ``(x, y)`` in pixels.
        tgt_xy: ``(M, 2)`` shared or ``(B, M, 2)`` per-pair target pixel positions ``(x, y)``.
        pow: exponent of the Euclidean distance (> 0).
        scale: multiplies the logits.
        reduction: ``"mean"`` (over ``B·N``), ``"sum"``, or ``"none"``.
        backend: ``"auto"``, ``"triton"``, ``"cpu"`` or ``"reference"``.

    Returns:
        A scalar for ``"mean"``/``"sum"``, ``(B, N)`` for ``"none"``; float32 (float64 for float64 inputs).
    """
    pow, scale = validation.check_warp_loss(src, tgt, src_xy, tgt_xy, pow, scale, reduction, backend)
    rows = warp_loss_rows_resolved(src, tgt, src_xy, tgt_xy, pow, scale, resolve_backend(backend, src.device))
    return reference.reduce_rows(rows, reduction)
