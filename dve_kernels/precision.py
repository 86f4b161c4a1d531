"""The precision policy, stated once (docs/contract.md section 4, "Precision"): what every path computes in.

Every path computes in its inputs' dtype, as PyTorch's own ops do; nothing silently widens or narrows:

- float64 features: float64 everywhere.
- float32 features: float32 dots, softmax and accumulation. On the CPU, float32 SIMD FMAs (the C++ kernels).
  On CUDA, by default (``torch.get_float32_matmul_precision() == "highest"``) IEEE float32 FMA dots (the contract
  also allows an explicit three-way TF32 split; the static kernel report models it slower on the kernels' tiles,
  docs/gpu.md); under ``"high"`` or
  ``"medium"`` single-pass TF32, which the user asked for the PyTorch way (:func:`float32_dot`).
- float16 / bfloat16 features: 16-bit operands with float32 accumulation and softmax statistics. On CUDA the
  Triton kernels' tensor-core dots; on the CPU, which has no 16-bit arithmetic, the float32 kernels
  (:func:`kernel_dtype`).

Only cheap ``O(B·(N + M)·C)`` steps are computed wider (:data:`WIDE`): the L2 normalisation of the drop-in
losses (normalised in float32, each vector's norm is off by ~1e-7, which scales all ~400-sized logits of its
row), the backward's per-row statistics, and the ops' saved log-sum-exp ``lse`` (a float32 lse of logits ~400
is only 3e-5 exact). Coordinates, expected distances (``rows``) and the loss are :func:`accumulate_dtype`.
"""

from __future__ import annotations

import torch

#: The dtype of the cheap O(B·(N + M)·C) steps: normalisation, the saved log-sum-exp.
WIDE = torch.float64
#: The dtype of the saved statistic ``lse`` of the forward ops, on every backend.
LSE_DTYPE = WIDE
HALF_DTYPES = (torch.float16, torch.bfloat16)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The one rule for everything that is not a feature: accumulators and softmax statistics of the kernels,
    coordinates, expected distances (``rows``, ``grad_rows``) and the loss: float64 for float64 features, float32
    otherwise (16-bit coordinates would be off by pixels). The C++ binding states it once too (``side_dtype``)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_dtype(dtype: torch.dtype, backend: str) -> torch.dtype:
    """The features' dtype as the kernels of a resolved ``backend`` ("cpu", "triton", "reference") take it:
    16-bit features become float32 for the C++ kernels (no 16-bit arithmetic on the CPU), everything else
    stays as it is."""
    if backend == "cpu" and dtype in HALF_DTYPES:
        return torch.float32
    return dtype


def float32_dot() -> str:
    """The float32 dot algorithm of a Triton launch: "ieee" (FMA dots, within the accuracy rule) under
    ``torch.get_float32_matmul_precision() == "highest"``, single-pass "tf32" under "high" or "medium"."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
