"""Fused Triton kernels for DVE: the CUDA implementations of the ``dve_kernels`` ops.

The launchers (:func:`exchange_forward`, :func:`exchange_backward`, :func:`warp_loss_forward`,
:func:`warp_loss_backward`) take and return tensors exactly as the op schemas of :mod:`dve_kernels._library`
say; that module registers them as the ops' CUDA kernels, and routes CPU tensors to them under Triton's
interpreter (``TRITON_INTERPRET=1``, set before ``triton`` is imported) for ``backend="triton"``.
"""

from ._launch import LaunchConfig, Specialization, channel_pad, interpreter_active, launch_config
from .exchange import exchange_backward, exchange_forward, exchange_specializations
from .warp_loss import warp_loss_backward, warp_loss_forward, warp_loss_specializations


def kernel_specializations() -> list:
    """Every kernel variant the launchers can pick: name, JIT kernel, signature, constexprs, warps, stages.

    ``dve_kernels/ops/_aot.py`` compiles them ahead of time (tests/test_triton_aot.py, bench/). Each one comes
    twice: with ``EVEN_C`` (C equal to its power-of-two pad: 16, 32, 64, 128, 256, the usual case and the fast
    one), and with any other C, named ``..._ragged``, with its own launch configuration (launch_config's
    ``even_c``).
    """
    return exchange_specializations() + warp_loss_specializations()


__all__ = [
    "LaunchConfig", "Specialization", "channel_pad", "exchange_backward", "exchange_forward",
    "interpreter_active", "kernel_specializations", "launch_config", "warp_loss_backward", "warp_loss_forward",
]
