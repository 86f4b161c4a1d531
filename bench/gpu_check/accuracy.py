"""Sections 2 and 3: accuracy against float64 under the tests' rule, and determinism."""

from __future__ import annotations

from .common import KERNEL_VARIANTS, features, fp32_dot, torch_dtype

ACCURACY_VARIANTS = (("float16", None), ("bfloat16", None), ("float32", "ieee"))  # "tf32" is outside the rule
# (batch, N, M, C): C = C_PAD and a ragged C; odd N and M, N != M
ACCURACY_SHAPES = ((2, 1024, 1025, 64), (1, 257, 311, 59))
ACCURACY_POWS = (0.5, 1.0, 2.0, 0.7)  # every POW_MODE code path; the ragged shape only at the default 0.5


def error_bound(exact, dense_runs, dtype_name: str) -> float:
    """The accuracy rule of docs/contract.md section 4, as the tests state it (tests/_tolerance.py): ``dense_runs``
    are the dense computation's results at the input and its one-ulp neighbours."""
    from tests import _tolerance

    return _tolerance.tolerance(exact, dense_runs, torch_dtype(dtype_name))


def accuracy_case(op: str, shape, dtype_name: str, pow: float = 0.5, dot=None, device: str = "cuda",
                  backend: str = "triton", seed: int = 0, normalize: bool = True) -> dict:
    """One op's value and gradients, fused (public API, ``backend``; float32 dots by ``dot``, see :func:`fp32_dot`)
    and dense in ``dtype``, against dense float64."""
    import torch

    import dve_kernels
    from dve_kernels import reference

    batch, n, m, c = shape
    generator = torch.Generator().manual_seed(seed)
    a, b = features(batch, n, c, device, generator, normalize), features(batch, m, c, device, generator, normalize)
    if op == "exchange":
        upstream = torch.randn(batch, n, c, dtype=torch.float64, generator=generator).to(device)

        def dense(x, y):
            return reference.exchange(x, y, scale=1.0)

        def fused(x, y):
            return dve_kernels.exchange(x, y, scale=1.0, backend=backend)
    else:
        src_xy = (torch.rand(batch, n, 2, dtype=torch.float64, generator=generator) * 64).to(device)
        tgt_xy = (torch.rand(batch, m, 2, dtype=torch.float64, generator=generator) * 64).to(device)
        upstream = (torch.rand(batch, n, dtype=torch.float64, generator=generator) + 0.5).to(device)

        from dve_kernels.precision import accumulate_dtype as coords

        def dense(x, y):
            return reference.warp_loss_rows(x, y, src_xy.to(coords(x)), tgt_xy.to(coords(x)), pow, 1.0)

        def fused(x, y):
            return dve_kernels.warp_loss(x, y, src_xy, tgt_xy, pow=pow, reduction="none", backend=backend)

    def run_on(fn, tensors):
        inputs = [t.detach().requires_grad_(True) for t in tensors]
        out = fn(*inputs)
        grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
        return [out.detach().double()] + [g.detach().double() for g in grads]

    def run(fn, dtype):
        return run_on(fn, [t.to(dtype) for t in (a, b)])

    from tests._tolerance import neighbourhood

    low = torch_dtype(dtype_name)
    a, b = a.to(low), b.to(low)  # the values the dtype holds: every computation sees the same inputs
    exact = run(dense, torch.float64)
    neighbours = neighbourhood([a.cpu(), b.cpu()], generator)
    dense_runs = [run_on(dense, [x.to(device) for x in nbr]) for nbr in neighbours]
    with fp32_dot(dot):
        fused_low = run(fused, low)
    checks = {}
    for i, (name, f, e) in enumerate(zip(("value", "grad_a", "grad_b"), fused_low, exact)):
        fused_error = (f - e).abs().max().item() if torch.isfinite(f).all() else float("inf")
        dense_error = max((r[i] - e).abs().max().item() for r in dense_runs)
        bound = error_bound(e, [r[i] for r in dense_runs], dtype_name)
        checks[name] = {"fused_error": fused_error, "dense_error": dense_error, "bound": bound,
                        "passed": fused_error <= bound}
    return {"op": op, "shape": list(shape), "dtype": dtype_name, "pow": pow if op == "warp" else None, "dot": dot,
            "checks": checks, "passed": all(c["passed"] for c in checks.values())}


def accuracy_cases():
    """``(op, shape, dtype, pow, fp32 dot)`` of the accuracy section."""
    cases = []
    for dtype, dot in ACCURACY_VARIANTS:
        for shape in ACCURACY_SHAPES:
            cases.append(("exchange", shape, dtype, 0.5, dot))
            for pow in ACCURACY_POWS if shape == ACCURACY_SHAPES[0] else (0.5,):
                cases.append(("warp", shape, dtype, pow, dot))
    return cases


def determinism():
    import torch

    import dve_kernels

    results = {}
    generator = torch.Generator().manual_seed(1)
    for dtype_name, dot in KERNEL_VARIANTS:
        src, tgt, aux = (features(4, 2304, 64, "cuda", generator).to(torch_dtype(dtype_name)).requires_grad_(True)
                         for _ in range(3))
        src_xy = torch.rand(4, 2304, 2, device="cuda") * 96
        tgt_xy = torch.rand(4, 2304, 2, device="cuda") * 96

        def run():
            rebuilt = dve_kernels.exchange(src, aux, backend="triton")
            loss = dve_kernels.warp_loss(rebuilt, tgt, src_xy, tgt_xy, backend="triton")
            return [loss.detach()] + list(torch.autograd.grad(loss, (src, tgt, aux)))

        with fp32_dot(dot):
            first, second = run(), run()
        results[dtype_name + (f" {dot}" if dot else "")] = all(torch.equal(x, y) for x, y in zip(first, second))
    return all(results.values()), {"bitwise_equal": results}


def accuracy():
    """The accuracy section: every case of :func:`accuracy_cases`."""
    cases = [accuracy_case(*case) for case in accuracy_cases()]
    return all(c["passed"] for c in cases), {"cases": cases}
