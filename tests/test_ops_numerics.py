"""Values and every gradient of both ops, on every fused backend, against float64 (docs/contract.md section 4).

Parametrised over the backends (``cpu``: the C++ kernels; ``triton``: the Triton kernels, in the interpreter
without a GPU) with odd and prime sizes, N != M, batch 1, C across every channel pad, every distance power,
float64 and float32 (the tolerance rule of tests/_tolerance.py), sharp softmaxes (x20-normalised vectors) and
logits of 1e4. Backend-specific concerns (threads, instruction sets, tiles, 16-bit roots) live in
test_ops_cpu_kernels.py and test_ops_triton_kernels.py; the seed sweeps in test_ops_sweeps.py.
"""

from __future__ import annotations


import pytest
import torch

import dve_kernels
from dve_kernels import _library, reference

from _tolerance import assert_within, neighbourhood
from dve_kernels._env import triton_interpreter_requested

INTERPRETER = triton_interpreter_requested() and not torch.cuda.is_available()
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [
    pytest.param("cpu", marks=pytest.mark.skipif(not _library.CPU_KERNELS or DEVICE != "cpu",
                                                 reason="needs dve_kernels._C and CPU tensors")),
    pytest.param("triton", marks=pytest.mark.skipif(not (INTERPRETER or torch.cuda.is_available()),
                                                    reason="needs a GPU or TRITON_INTERPRET=1")),
]
# (B, N, M, C)
SHAPES = [(1, 1, 1, 1), (2, 37, 53, 1), (1, 61, 47, 17), (2, 33, 20, 64), (1, 29, 40, 256)]
POWS = (0.5, 1.0, 2.0, 0.7)


def _features(g, batch, rows, channels, normalize=True, magnitude=1.0):
    x = torch.randn(batch, rows, channels, generator=g, dtype=torch.float64)
    if normalize:
        x = 20 * x / x.norm(dim=-1, keepdim=True)
    return (x * magnitude).float().double()  # float32 values: every dtype compared sees the same inputs


def _run(fn, inputs, upstream):
    inputs = [x.detach().clone().to(DEVICE).requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, upstream.to(DEVICE, out.dtype))
    return [out.detach().cpu()] + [g.detach().cpu() for g in grads]


def _check(fused_fn, dense_fn, inputs, upstream, dtype, names):
    """The per-input rule (tests/_tolerance.py): the dense computation in ``dtype`` over the input's one-ulp
    neighbourhood sets each result's bound."""
    exact = _run(dense_fn, inputs, upstream)
    fused = _run(fused_fn, [x.to(dtype) for x in inputs], upstream)
    for value in fused:
        assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    dense = None
    if dtype != torch.float64:
        generator = torch.Generator().manual_seed(0)
        runs = [_run(dense_fn, nbr, upstream) for nbr in neighbourhood([x.to(dtype) for x in inputs], generator)]
        dense = [[run[i] for run in runs] for i in range(len(fused))]
    assert_within(fused, exact, dense, dtype, names)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_exchange(backend, shape, dtype):
    batch, n, m, channels = shape
    g = torch.Generator().manual_seed(n * 7 + m)
    query, aux = _features(g, batch, n, channels), _features(g, batch, m, channels)
    upstream = torch.randn(batch, n, channels, generator=g, dtype=torch.float64)
    scale = 0.05 if dtype == torch.float64 else 1.0
    _check(lambda q, a: dve_kernels.exchange(q, a, scale=scale, backend=backend),
           lambda q, a: reference.exchange(q, a, scale=scale), [query, aux], upstream, dtype,
           ("out", "grad_query", "grad_aux"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("pow", POWS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_loss(backend, shape, pow, dtype):
    batch, n, m, channels = shape
    g = torch.Generator().manual_seed(n * 11 + m)
    src, tgt = _features(g, batch, n, channels), _features(g, batch, m, channels)
    src_xy = (torch.rand(batch, n, 2, generator=g, dtype=torch.float64) * 40).float().double().to(DEVICE)
    tgt_xy = (torch.rand(m, 2, generator=g, dtype=torch.float64) * 40).float().double().to(DEVICE)  # shared (M, 2)
    upstream = torch.rand(batch, n, generator=g, dtype=torch.float64) - 0.3

    def rows(fn, **kwargs):
        return lambda s, t: fn(s, t, src_xy.to(s.dtype), tgt_xy.to(s.dtype), pow=pow, scale=0.7, reduction="none",
                               **kwargs)

    _check(rows(dve_kernels.warp_loss, backend=backend), rows(reference.warp_loss), [src, tgt], upstream, dtype,
           ("rows", "grad_src", "grad_tgt"))


@pytest.mark.parametrize("magnitude", [1.0, 5.0], ids=["logits400", "logits1e4"])
@pytest.mark.parametrize("op", ["exchange", "warp_loss"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_sharp_softmax_and_huge_logits(backend, op, magnitude):
    """x20-normalised vectors give logits of 400; x5 of that, 1e4 (one-hot rows in float32)."""
    g = torch.Generator().manual_seed(17)
    a, b = _features(g, 2, 41, 24, magnitude=magnitude), _features(g, 2, 35, 24, magnitude=magnitude)
    if op == "exchange":
        upstream = torch.randn(2, 41, 24, generator=g, dtype=torch.float64)
        fused = lambda x, y: dve_kernels.exchange(x, y, backend=backend)  # noqa: E731
        dense, names = (lambda x, y: reference.exchange(x, y)), ("out", "grad_query", "grad_aux")
    else:
        src_xy = (torch.rand(2, 41, 2, generator=g, dtype=torch.float64) * 30).float().double().to(DEVICE)
        tgt_xy = (torch.rand(2, 35, 2, generator=g, dtype=torch.float64) * 30).float().double().to(DEVICE)
        upstream = torch.rand(2, 41, generator=g, dtype=torch.float64)
        fused = lambda x, y: dve_kernels.warp_loss(x, y, src_xy.to(x.dtype), tgt_xy.to(x.dtype),  # noqa: E731
                                                   reduction="none", backend=backend)
        dense = lambda x, y: reference.warp_loss(x, y, src_xy.to(x.dtype), tgt_xy.to(x.dtype),  # noqa: E731
                                                 reduction="none")
        names = ("rows", "grad_src", "grad_tgt")
    for dtype in (torch.float64, torch.float32):
        _check(fused, dense, [a, b], upstream, dtype, names)
        out = fused(a.to(DEVICE, dtype), b.to(DEVICE, dtype))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dve_loss_matches_the_original_code(backend):
    """The drop-in, end to end, against the original repository's per-pair loops (dve_kernels.original)."""
    from dve_kernels import original

    g = torch.Generator().manual_seed(4)
    feats = torch.randn(4, 16, 6, 5, generator=g, dtype=torch.float64).float().double()
    grid = torch.rand(2, 12, 10, 2, generator=g, dtype=torch.float64) * 2.2 - 1.1

    def run(fn, dtype, **kwargs):
        f = feats.to(DEVICE, dtype).requires_grad_(True)
        loss = fn(f, {"grid": grid.to(DEVICE, dtype)}, **kwargs)
        (grad,) = torch.autograd.grad(loss, f)
        return [loss.detach().cpu(), grad.cpu()]

    # float64: the dense reference (the original sums its last product in float32 even for float64 inputs)
    exact = run(reference.dense_correlation_loss_dve, torch.float64)
    assert_within(run(dve_kernels.dense_correlation_loss_dve, torch.float64, backend=backend), exact, None,
                  torch.float64, ("loss", "grad"))
    original64 = run(original.dense_correlation_loss_dve, torch.float64)
    assert abs(original64[0].item() - exact[0].item()) <= 1e-6 * abs(exact[0].item())  # the two references agree
    dense = run(original.dense_correlation_loss_dve, torch.float32)
    fused = run(dve_kernels.dense_correlation_loss_dve, torch.float32, backend=backend)
    assert abs(fused[0].item() - exact[0].item()) <= 1e-5 * abs(exact[0].item())
    assert_within(fused[1:], exact[1:], dense[1:], torch.float32, ("grad",))


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_returns_the_same_dtypes(backend):
    """float32 rows for 32- and 16-bit features, float64 for float64; outputs in the features' dtype."""
    for dtype in (torch.float32, torch.float64) + ((torch.float16,) if backend == "cpu" else ()):
        x = torch.randn(1, 9, 4, device=DEVICE).to(dtype)
        xy = torch.rand(1, 9, 2, device=DEVICE) * 5
        fused = (dve_kernels.exchange(x, x, backend=backend),
                 dve_kernels.warp_loss(x, x, xy, xy, reduction="none", backend=backend))
        dense = (dve_kernels.exchange(x, x, backend="reference"),
                 dve_kernels.warp_loss(x, x, xy, xy, reduction="none", backend="reference"))
        assert [t.dtype for t in fused] == [t.dtype for t in dense] == \
            [dtype, torch.float64 if dtype == torch.float64 else torch.float32]


def test_normalisation_is_wide_chunked_and_differentiable(monkeypatch):
    """normalize_embeddings: float32 / 16-bit embeddings normalised in float64, rounded once or kept wider on
    request, gradient by gradcheck, in chunks."""
    import torch.nn.functional as F

    from dve_kernels import conventions

    monkeypatch.setattr(conventions, "NORMALIZE_CHUNK", 4)  # several chunks and a partial one
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: conventions._Normalize.apply(t, torch.float64), (x,))
    x32 = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    exact = (F.normalize(x32.double(), dim=-1) * 20)
    assert torch.equal(conventions.normalize_embeddings(x32), exact.float())  # rounded once from float64
    wide = conventions.normalize_embeddings(x32, torch.float64)
    assert wide.dtype == torch.float64 and torch.allclose(wide, exact, rtol=1e-15, atol=0)  # never rounded
    upstream = torch.randn(2, 9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    (grad,) = torch.autograd.grad(wide, x32, upstream)
    (expected,) = torch.autograd.grad(exact, x32, upstream)
    assert grad.dtype == torch.float32 and torch.allclose(grad, expected, rtol=1e-6, atol=0)
    x16 = x32.detach().bfloat16()
    exact16 = F.normalize(x16.double(), dim=-1) * 20
    assert torch.equal(conventions.normalize_embeddings(x16), exact16.bfloat16())
    assert torch.equal(conventions.normalize_embeddings(x16, torch.float32), exact16.float())
