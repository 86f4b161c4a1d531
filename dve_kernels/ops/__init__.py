"""Fused Triton kernels for DVE, registered as ``torch.library`` custom ops.

The seam with :mod:`dve_kernels.functional`: :func:`exchange` and :func:`warp_loss_rows`, both
differentiable; inputs arrive validated and contiguous. Ops (namespace ``dve_kernels``):
``exchange_fwd_triton``, ``exchange_bwd_triton``, ``warp_loss_fwd_triton``, ``warp_loss_bwd_triton``.
CPU tensors run only under ``TRITON_INTERPRET=1`` (set before ``triton`` is imported).
"""

from ._launch import LaunchConfig, Specialization, channel_pad, launch_config
from .exchange import exchange, exchange_backward, exchange_forward, exchange_specializations
from .warp_loss import warp_loss_backward, warp_loss_forward, warp_loss_rows, warp_loss_specializations


def kernel_specializations() -> list:
    """Every kernel variant the launchers can pick: name, JIT kernel, signature, constexprs, warps, stages.

    ``dve_kernels/ops/_aot.py`` compiles them ahead of time (tests/test_triton_aot.py, bench/). Each one comes
    twice: with ``EVEN_C`` (C equal to its power-of-two pad: 16, 32, 64, 128, 256, the usual case and the fast
    one), and with any other C, named ``..._ragged`` (its launch configuration may differ: launch_config's
    ``even_c``). float32 comes three times: IEEE (``fp32``), the TF32 split (``tf32x3``), plain TF32 (``tf32``).
    """
    return exchange_specializations() + warp_loss_specializations()


__all__ = [
    "LaunchConfig", "Specialization", "channel_pad", "exchange", "exchange_backward", "exchange_forward",
    "kernel_specializations", "launch_config", "warp_loss_backward", "warp_loss_forward", "warp_loss_rows",
]
