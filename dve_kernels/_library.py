"""The ``dve_kernels`` ops: one schema per computation, defined once, for every backend.

Four ops (``torch.ops.dve_kernels.*``)::

    exchange_fwd(query, aux, scale) -> (out, lse)
    exchange_bwd(grad_out, query, aux, out, lse, scale) -> (grad_query, grad_aux)
    warp_loss_fwd(src, tgt, src_xy, tgt_xy, pow, scale) -> (rows, lse)
    warp_loss_bwd(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale) -> (grad_src, grad_tgt)

Features ``(B, N, C)`` / ``(B, M, C)`` are float32, float64, bfloat16 or float16; coordinates ``(B, ., 2)``,
``rows`` and ``grad_rows`` are float64 for float64 features and float32 otherwise. Outputs are contiguous.

The saved statistic ``lse`` ``(B, N)`` has one convention on every backend: the natural log-sum-exp of the
row's logits, in float64 (a float32 lse of logits ~400 is only 3e-5 exact). The backward recomputes each
probability as ``exp(logit - lse)`` and divides by the recomputed row sum, which removes any common rounding
of ``lse``; ``lse`` is an output without a gradient.

Implementations: the C++ kernels of ``dve_kernels._C`` register themselves as the CPU kernels
(``TORCH_LIBRARY_IMPL`` in ``python/bindings.cpp``); the Triton launchers of :mod:`dve_kernels.ops` are the CUDA
kernels; for ``backend="triton"`` on CPU tensors under Triton's interpreter (how CI tests the Triton kernels)
:func:`interpreting` routes the same ops to the Triton launchers. One fake (meta) kernel and one autograd
formula per op serve them all; the backward ops refuse to be differentiated (no double backward).
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .precision import LSE_DTYPE, accumulate_dtype

_NAMESPACE = "dve_kernels"
SCHEMAS = {
    "exchange_fwd": "(Tensor query, Tensor aux, float scale) -> (Tensor, Tensor)",
    "exchange_bwd": "(Tensor grad_out, Tensor query, Tensor aux, Tensor out, Tensor lse, float scale) "
                    "-> (Tensor, Tensor)",
    "warp_loss_fwd": "(Tensor src, Tensor tgt, Tensor src_xy, Tensor tgt_xy, float pow, float scale) "
                     "-> (Tensor, Tensor)",
    "warp_loss_bwd": "(Tensor grad_rows, Tensor src, Tensor tgt, Tensor src_xy, Tensor tgt_xy, Tensor rows, "
                     "Tensor lse, float pow, float scale) -> (Tensor, Tensor)",
}
for _name, _schema in SCHEMAS.items():
    torch.library.define(f"{_NAMESPACE}::{_name}", _schema)

#: The registered ops, ``torch.ops.dve_kernels`` (not the Triton package :mod:`dve_kernels.ops`).
dve_ops = torch.ops.dve_kernels
BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root (needs a C++ compiler)"

# --------------------------------------------------------------------------------------------- implementations

try:  # the CPU kernels: importing the extension registers them (after the schemas above exist)
    from . import _C

    CPU_KERNELS_ERROR = None
    #: The instruction set the C++ kernels run with here: "avx512", "avx2" or "generic" (DVE_KERNELS_ISA forces one).
    KERNEL_ISA = _C.kernel_isa
except ImportError as _error:  # not built, built for another torch/python, or a bad DVE_KERNELS_ISA
    CPU_KERNELS_ERROR = f"the C++ extension dve_kernels._C cannot be imported ({_error})"
    KERNEL_ISA = None
CPU_KERNELS = CPU_KERNELS_ERROR is None

_triton_state = {"launchers": None, "error": None}


def triton_launchers():
    """The Triton launchers by op name, registered as the CUDA kernels on first use; ImportError if no Triton."""
    if _triton_state["launchers"] is None:
        if _triton_state["error"] is not None:
            raise ImportError(_triton_state["error"])
        try:
            from . import ops as triton_ops  # noqa: PLC0415  (imports triton: only when it is needed)
        except ImportError as error:
            _triton_state["error"] = f"{error}"
            raise
        launchers = {
            "exchange_fwd": triton_ops.exchange_forward,
            "exchange_bwd": triton_ops.exchange_backward,
            "warp_loss_fwd": triton_ops.warp_loss_forward,
            "warp_loss_bwd": triton_ops.warp_loss_backward,
        }
        for name, launcher in launchers.items():
            torch.library.register_kernel(f"{_NAMESPACE}::{name}", "cuda", launcher)
        _triton_state["launchers"] = launchers
    return _triton_state["launchers"]


if torch.cuda.is_available():  # register the CUDA kernels up front, so that torch.compile finds them
    try:
        triton_launchers()
    except ImportError:
        pass  # backend="triton" says why when it is asked for


class _TritonInterpreter(TorchDispatchMode):
    """Runs the dve_kernels ops of CPU tensors through the Triton launchers (Triton's interpreter)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1] if func.namespace == _NAMESPACE else None
        if name in SCHEMAS:
            return triton_launchers()[name](*args, **kwargs)
        return func(*args, **kwargs)


_routing = threading.local()


def _interpreting_now() -> bool:
    return getattr(_routing, "depth", 0) > 0


@contextlib.contextmanager
def interpreting(active: bool = True):
    """Inside, the ops run CPU tensors through the Triton kernels in Triton's interpreter (when ``active``)."""
    if not active:
        yield
        return
    _routing.depth = getattr(_routing, "depth", 0) + 1
    try:
        with _TritonInterpreter():
            yield
    finally:
        _routing.depth -= 1


# ---------------------------------------------------------------------------------------------------- fakes
# Shapes, dtypes and strides of what every kernel returns: contiguous, whatever the inputs' layout.


@torch.library.register_fake(f"{_NAMESPACE}::exchange_fwd")
def _exchange_fwd_fake(query, aux, scale):
    return query.new_empty(query.shape), query.new_empty(query.shape[:2], dtype=LSE_DTYPE)


@torch.library.register_fake(f"{_NAMESPACE}::exchange_bwd")
def _exchange_bwd_fake(grad_out, query, aux, out, lse, scale):
    return query.new_empty(query.shape), aux.new_empty(aux.shape)


@torch.library.register_fake(f"{_NAMESPACE}::warp_loss_fwd")
def _warp_loss_fwd_fake(src, tgt, src_xy, tgt_xy, pow, scale):
    shape = src.shape[:2]
    return src.new_empty(shape, dtype=accumulate_dtype(src.dtype)), src.new_empty(shape, dtype=LSE_DTYPE)


@torch.library.register_fake(f"{_NAMESPACE}::warp_loss_bwd")
def _warp_loss_bwd_fake(grad_rows, src, tgt, src_xy, tgt_xy, rows, lse, pow, scale):
    return src.new_empty(src.shape), tgt.new_empty(tgt.shape)


# ------------------------------------------------------------------------------------------------- autograd
# The forward ops save what the fused backward recomputes the probabilities from (lse, never an N x M matrix)
# and remember whether they ran under the interpreter, so that their backward runs on the same kernels.


def _exchange_setup_context(ctx, inputs, output):
    query, aux, scale = inputs
    out, lse = output
    ctx.save_for_backward(query, aux, out, lse)
    ctx.scale = scale
    ctx.interpreted = _interpreting_now()
    ctx.mark_non_differentiable(lse)


def _exchange_backward(ctx, grad_out, grad_lse):
    if grad_out is None:
        return None, None, None
    query, aux, out, lse = ctx.saved_tensors
    with interpreting(ctx.interpreted):
        grad_query, grad_aux = dve_ops.exchange_bwd(grad_out.contiguous(), query, aux, out, lse, ctx.scale)
    return grad_query, grad_aux, None


def _warp_loss_setup_context(ctx, inputs, output):
    src, tgt, src_xy, tgt_xy, pow, scale = inputs
    rows, lse = output
    ctx.save_for_backward(src, tgt, src_xy, tgt_xy, rows, lse)
    ctx.pow = pow
    ctx.scale = scale
    ctx.interpreted = _interpreting_now()
    ctx.mark_non_differentiable(lse)


def _warp_loss_backward(ctx, grad_rows, grad_lse):
    if grad_rows is None:  # coordinates get no gradient (docs/contract.md section 1)
        return None, None, None, None, None, None
    src, tgt, src_xy, tgt_xy, rows, lse = ctx.saved_tensors
    with interpreting(ctx.interpreted):
        grad_src, grad_tgt = dve_ops.warp_loss_bwd(grad_rows.to(rows.dtype).contiguous(), src, tgt, src_xy, tgt_xy,
                                               rows, lse, ctx.pow, ctx.scale)
    return grad_src, grad_tgt, None, None, None, None


DOUBLE_BACKWARD_ERROR = (
    "dve_kernels: double backward is not supported: the fused backward ops ({op}) have no derivative of their "
    "own. First-order gradients (also with create_graph=True) are exact; for a loss on gradients (e.g. a "
    "gradient penalty) use backend='reference', the dense path."
)


def _refuse_double_backward(op_name):
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD_ERROR.format(op=op_name))

    return backward


torch.library.register_autograd(f"{_NAMESPACE}::exchange_fwd", _exchange_backward,
                                setup_context=_exchange_setup_context)
torch.library.register_autograd(f"{_NAMESPACE}::warp_loss_fwd", _warp_loss_backward,
                                setup_context=_warp_loss_setup_context)
for _name in ("exchange_bwd", "warp_loss_bwd"):
    torch.library.register_autograd(f"{_NAMESPACE}::{_name}", _refuse_double_backward(_name),
                                    setup_context=lambda ctx, inputs, output: None)
