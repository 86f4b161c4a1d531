"""Public functions: validation, backend choice, and the shapes of every tensor.

The backends meet here through one seam. A fused backend is a module with two differentiable functions:

- ``exchange(query, aux, scale) -> (B, N, C)``
- ``warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, scale) -> (B, N)`` expected distances

that receive validated, contiguous tensors on one device (features of one dtype; coordinates ``(B, ., 2)`` in
float64 for float64 features and float32 otherwise). ``"triton"`` is :mod:`dve_kernels.ops`, ``"cpu"`` is
:mod:`dve_kernels._cpu` (the compiled C++ kernels), ``"reference"`` is :mod:`dve_kernels.reference`.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings

import torch

from . import _validation as v
from . import reference
from .conventions import coordinate_dtype

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root (needs a C++ compiler)"


class BackendUnavailableError(RuntimeError):
    """The backend that was asked for cannot run here; the message says why and what to do."""


class _ReferenceBackend:
    """The dense path behind the same seam as the fused backends."""

    @staticmethod
    def exchange(query, aux, scale):
        logits = scale * torch.bmm(query, aux.transpose(1, 2))
        return torch.bmm(torch.softmax(logits, dim=-1), aux)

    warp_loss_rows = staticmethod(reference.warp_loss_rows)


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _load_triton():
    try:
        ops = importlib.import_module("dve_kernels.ops")
    except ImportError as error:  # triton missing, or a kernel module failed to import
        raise BackendUnavailableError(
            f"backend='triton' needs Triton ({error}); install it with `pip install triton`"
        ) from error
    return ops


@functools.lru_cache(maxsize=None)
def _load_cpu():
    try:
        _cpu = importlib.import_module("dve_kernels._cpu")
    except ImportError as error:
        raise BackendUnavailableError(
            f"backend='cpu' needs the compiled C++ extension dve_kernels._C, which is not built ({error}); "
            + BUILD_HINT
        ) from error
    return _cpu


def cpu_extension_available() -> bool:
    """Whether the compiled C++ kernels (``backend="cpu"``) can run here."""
    try:
        _load_cpu()
    except BackendUnavailableError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"backend='auto' falls back to the dense 'reference' path: {reason}. It materialises N x M "
                  f"matrices; {BUILD_HINT}.", RuntimeWarning, stacklevel=4)


def resolve_backend(backend: str, device: torch.device):
    """The backend module for ``backend`` on ``device``, or a :class:`BackendUnavailableError` saying why."""
    if backend == "auto":
        if device.type == "cuda":
            return _load_triton()
        if device.type == "cpu":
            try:
                return _load_cpu()
            except BackendUnavailableError as error:
                _warn_fallback(str(error).split(";")[0])
                return _ReferenceBackend
        return _ReferenceBackend
    if backend == "reference":
        return _ReferenceBackend
    if backend == "triton":
        if device.type != "cuda" and not (device.type == "cpu" and _triton_interpreter_on()):
            raise BackendUnavailableError(
                f"backend='triton' runs CUDA tensors, got tensors on {device}; CPU tensors run only under the Triton "
                f"interpreter (set TRITON_INTERPRET=1 before triton is imported)"
            )
        if device.type == "cpu" and "triton" in sys.modules and not _triton_interpreter_on():
            raise BackendUnavailableError("TRITON_INTERPRET=1 must be set before triton is imported")
        return _load_triton()
    if device.type != "cpu":
        raise BackendUnavailableError(f"backend='cpu' runs CPU tensors, got tensors on {device}")
    return _load_cpu()


def _batched_coordinates(xy: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    xy = xy.to(coordinate_dtype(dtype))
    if xy.dim() == 2:
        xy = xy.unsqueeze(0).expand(batch, -1, -1)
    return xy.contiguous()


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
    scale = v.check_exchange(query, aux, scale, backend)
    impl = resolve_backend(backend, query.device)
    return impl.exchange(query.contiguous(), aux.contiguous(), scale)


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
    pow, scale = v.check_warp_loss(src, tgt, src_xy, tgt_xy, pow, scale, reduction, backend)
    impl = resolve_backend(backend, src.device)
    batch = src.shape[0]
    rows = impl.warp_loss_rows(src.contiguous(), tgt.contiguous(), _batched_coordinates(src_xy, batch, src.dtype),
                               _batched_coordinates(tgt_xy, batch, src.dtype), pow, scale)
    return reference.reduce_rows(rows, reduction)
