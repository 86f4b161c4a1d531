"""dve_kernels: fused kernels for Descriptor Vector Exchange (Thewlis et al., ICCV 2019).

The exchange reconstruction and the warp-distance softmax loss, forward and backward, without ever
materialising an ``N x M`` matrix: Triton kernels on CUDA, compiled C++ kernels on the CPU, and the dense
PyTorch formulation (:mod:`dve_kernels.reference`) as the executable specification.
"""

from . import reference
from .compat import DVELoss, dense_correlation_loss, dense_correlation_loss_dve
from .functional import exchange, warp_loss

__version__ = "0.1.0"

__all__ = [
    "exchange",
    "warp_loss",
    "dense_correlation_loss",
    "dense_correlation_loss_dve",
    "DVELoss",
    "reference",
    "__version__",
]
