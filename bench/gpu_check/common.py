"""What the sections share: their names and estimates, the shapes and variants they run, the one coupling to
``dve_kernels.ops``, the float32 dot choice, and the test inputs."""

from __future__ import annotations

import contextlib

# Rough cost of each section on an H100/H200-class GPU, seconds (compiles in ``warmup``); a section starts only
# when its estimate fits in what is left of the budget.
SECTION_ESTIMATES_S = {"warmup": 120.0, "accuracy": 45.0, "determinism": 10.0, "memory": 10.0, "kernels": 40.0,
                       "dve": 60.0}
SECTIONS = tuple(SECTION_ESTIMATES_S)
KERNEL_SHAPE = {"batch": 16, "n": 4096, "m": 4096, "channels": 64}
# (dtype, float32 dot algorithm): float32 under "highest" (IEEE FMA dots) and "high" (single-pass TF32) matmul
# precision, see fp32_dot
KERNEL_VARIANTS = (("bfloat16", None), ("float32", "ieee"), ("float32", "tf32"))
PASSES = ("exchange_fwd", "exchange_bwd_query", "exchange_bwd_aux", "warp_loss_fwd", "warp_loss_bwd_src",
          "warp_loss_bwd_tgt")


def ops_adapter():
    """The one place that knows ``dve_kernels.ops``'s launcher names and its Triton kernels' names.

    Returns ``(launchers, kernel_names)``: ``launchers`` maps "exchange" / "warp" to ``(forward, backward)`` with
    ``forward(a, b, *extra) -> (out, lse)`` and ``backward(grad, a, b, *extra, out, lse) -> grads``; ``kernel_names``
    maps each pass of :data:`PASSES` to the name its JIT function has (what the CUDA profiler shows)."""
    from dve_kernels import ops

    launchers = {
        "exchange": (lambda q, a, scale: ops.exchange_forward(q, a, scale),
                     lambda g, q, a, scale, out, lse: ops.exchange_backward(g, q, a, out, lse, scale)),
        "warp": (lambda s, t, sxy, txy, pow, scale: ops.warp_loss_forward(s, t, sxy, txy, pow, scale),
                 lambda g, s, t, sxy, txy, pow, scale, rows, lse:
                 ops.warp_loss_backward(g, s, t, sxy, txy, rows, lse, pow, scale)),
    }
    kernel_names = {}
    for spec in ops.kernel_specializations():  # the JIT function behind each pass, whatever it is called
        pass_name = next((p for p in sorted(PASSES, key=len, reverse=True) if spec.name.startswith(p + "_")), None)
        if pass_name and pass_name not in kernel_names:
            kernel_names[pass_name] = getattr(spec.kernel, "__name__", None) or spec.kernel.fn.__name__
    missing = set(PASSES) - set(kernel_names)
    if missing:
        raise RuntimeError(f"dve_kernels.ops.kernel_specializations() lists no kernel for {sorted(missing)}")
    return launchers, kernel_names


#: torch.set_float32_matmul_precision for each float32 dot algorithm of the kernels (dve_kernels/precision.py).
MATMUL_PRECISION = {None: "highest", "ieee": "highest", "tf32": "high"}


@contextlib.contextmanager
def fp32_dot(choice):
    """Run float32 launches with dot algorithm ``choice`` (None, "ieee" or "tf32"), chosen the PyTorch way: through
    ``torch.set_float32_matmul_precision`` (restored afterwards)."""
    import torch

    if choice not in MATMUL_PRECISION:
        raise ValueError(f"float32 dot algorithm {choice!r}: the kernels have {sorted(k for k in MATMUL_PRECISION if k)}")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(MATMUL_PRECISION[choice])
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def torch_dtype(name: str):
    """The torch dtype called ``name`` ("float32", "bfloat16", ...)."""
    import torch

    return getattr(torch, name)


def features(batch, rows, channels, device, generator, normalize=True):
    """float64 embeddings; ``normalize``: unit length x 20 as the drop-in's normalize_vectors=True."""
    import torch

    x = torch.randn(batch, rows, channels, dtype=torch.float64, generator=generator).to(device)
    return 20 * x / x.norm(dim=-1, keepdim=True) if normalize else x
