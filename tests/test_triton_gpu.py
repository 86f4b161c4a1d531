"""The Triton kernels on a real GPU (skipped without CUDA): 16-bit accuracy, float32 without TF32,
determinism and memory at sizes the interpreter cannot reach.

docs/contract.md section 4: fp16/bf16 errors against the float64 reference at most twice those of the dense
PyTorch computation in the same dtype (the FlashAttention test rule); fp32 no further than twice the
dense float32 error or 1e-5 of the max-norm.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPES = [(2, 97, 131, 1), (1, 257, 311, 33), (2, 1024, 1025, 64), (1, 389, 211, 256), (1, 97, 1025, 59)]


@pytest.fixture(autouse=True)
def _no_tf32():
    """The dense float32 comparison must itself be IEEE float32."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def _features(batch, rows, channels, normalize=True):
    x = torch.randn(batch, rows, channels, device="cuda", dtype=torch.float64)
    return 20 * x / x.norm(dim=-1, keepdim=True) if normalize else x


def _run(fn, inputs, dtype, upstream):
    inputs = [x.detach().to(dtype).requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return [out.detach()] + [g.detach() for g in grads]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _compare(dense, fused, inputs, upstream, dtype):
    exact = _run(dense, inputs, torch.float64, upstream)
    dense_low = _run(dense, inputs, dtype, upstream)
    fused_low = _run(fused, inputs, dtype, upstream)
    floor = 1e-5 if dtype == torch.float32 else 1e-6
    for name, f, d, e in zip(("value", "grad 1", "grad 2"), fused_low, dense_low, exact):
        assert torch.isfinite(f).all(), name
        bound = max(2 * _err(d, e), floor * e.abs().max().item())
        assert _err(f, e) <= bound, f"{name} {dtype}: {_err(f, e):.3g} > {bound:.3g} (dense {_err(d, e):.3g})"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_exchange_gpu(shape, dtype):
    from dve_kernels import ops, reference

    batch, n, m, c = shape
    upstream = torch.randn(batch, n, c, device="cuda", dtype=torch.float64)
    _compare(lambda q, a: reference.exchange(q, a, scale=1.0), lambda q, a: ops.exchange(q, a, 1.0),
             [_features(batch, n, c), _features(batch, m, c)], upstream, dtype)


@pytest.mark.parametrize("pow", [0.5, 1.0, 2.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_warp_loss_gpu(shape, dtype, pow):
    from dve_kernels import ops, reference

    batch, n, m, c = shape
    src_xy = torch.rand(batch, n, 2, device="cuda", dtype=torch.float64) * 64
    tgt_xy = torch.rand(batch, m, 2, device="cuda", dtype=torch.float64) * 64
    upstream = torch.rand(batch, n, device="cuda", dtype=torch.float64) + 0.5

    def dense(s, t):
        xy_dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
        return reference.warp_loss_rows(s, t, src_xy.to(xy_dtype), tgt_xy.to(xy_dtype), pow, 1.0)

    def fused(s, t):
        xy_dtype = torch.float64 if s.dtype == torch.float64 else torch.float32
        return ops.warp_loss_rows(s, t, src_xy.to(xy_dtype), tgt_xy.to(xy_dtype), pow, 1.0)

    _compare(dense, fused, [_features(batch, n, c), _features(batch, m, c)], upstream, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_deterministic_gpu(dtype):
    from dve_kernels import ops

    src, tgt, aux = (_features(4, 2304, 64).to(dtype).requires_grad_(True) for _ in range(3))
    src_xy = torch.rand(4, 2304, 2, device="cuda") * 96
    tgt_xy = torch.rand(4, 2304, 2, device="cuda") * 96

    def run():
        loss = ops.warp_loss_rows(ops.exchange(src, aux, 1.0), tgt, src_xy, tgt_xy, 0.5, 1.0).mean()
        return [loss.detach()] + list(torch.autograd.grad(loss, (src, tgt, aux)))

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_memory_does_not_grow_with_n_times_m():
    """At N = M = 128², B = 2, C = 64 a dense float32 matching matrix alone is 1 GiB; the fused path needs MiBs."""
    from dve_kernels import ops

    batch, n, c = 2, 128 * 128, 64
    src, tgt, aux = (_features(batch, n, c).float().requires_grad_(True) for _ in range(3))
    xy = torch.rand(batch, n, 2, device="cuda") * 512
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = ops.warp_loss_rows(ops.exchange(src, aux, 1.0), tgt, xy, xy, 0.5, 1.0).mean()
    loss.backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    feature_bytes = batch * n * c * 4
    message = f"peak extra {extra / 2**20:.1f} MiB for {feature_bytes / 2**20:.1f} MiB of features"
    assert extra < 12 * feature_bytes, message
