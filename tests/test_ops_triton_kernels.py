"""What is particular to the Triton kernels (``backend="triton"``): C = 256, many tiles, shared target coordinates,
the fourth roots, non-finite inputs, float16, random shapes, memory and determinism. Without a GPU the kernels
run on CPU tensors in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which is ~1000x slower
than a GPU: sizes stay small. Values and gradients over every backend are in test_ops_numerics.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dve_kernels._env import triton_interpreter_requested

triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton_interpreter_requested():
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from dve_kernels import reference  # noqa: E402
from dve_kernels.ops import _distance, _launch  # noqa: E402
from dve_kernels.memory import AllocationRecorder  # noqa: E402

import dve_kernels  # noqa: E402
from _tolerance import assert_within  # noqa: E402


def _exchange_triton(query, aux, scale):
    return dve_kernels.exchange(query, aux, scale=scale, backend="triton")


def _warp_rows_triton(src, tgt, src_xy, tgt_xy, pow, scale):
    return dve_kernels.warp_loss(src, tgt, src_xy, tgt_xy, pow=pow, scale=scale, reduction="none", backend="triton")


@pytest.fixture(autouse=True)
def _interpreter_tiles(monkeypatch):
    """Under the interpreter, 32 x 32 tiles for 32/64-bit data instead of the GPU's 16 x 16.

    The interpreter's cost grows with the number of programs and loop steps, and the 16 x 16 FMA tiles
    of the GPU configuration made this file take minutes. Forward and backward still share one
    configuration (what the bitwise agreement of their logits relies on); test_many_tiles runs the
    GPU's 16 x 16 tiles themselves.
    """
    if DEVICE == "cuda":
        return
    real = _launch.launch_config

    def larger_tiles(pass_name, c_pad, dtype, *args, **kwargs):
        config = real(pass_name, c_pad, dtype, *args, **kwargs)
        if dtype in (torch.float32, torch.float64):
            config = dataclasses.replace(config, block_n=32, block_m=32)
        return config

    monkeypatch.setattr(_launch, "launch_config", larger_tiles)  # what kernel_constexprs reads


# (B, N, M, C): odd, prime, N != M, B = 1, C across every padding bucket, M = 3N (num_aux = 3)
SHAPES = [
    (2, 37, 53, 1),
    (1, 29, 17, 3),
    (2, 40, 31, 16),
    (1, 23, 41, 33),
    (1, 61, 47, 64),
    (1, 13, 39, 64),  # num_aux = 3: one joint softmax over three auxiliary images
]
SHAPE_256 = (1, 19, 23, 256)
POWS = (0.5, 1.0, 2.0, 0.7)


def _features(batch, rows, channels, dtype, normalize=False, generator=None):
    """Random embeddings; ``normalize`` mimics normalize_vectors=True (unit length x 20)."""
    x = torch.randn(batch, rows, channels, dtype=torch.float64, generator=generator)
    if normalize:
        x = 20 * x / x.norm(dim=-1, keepdim=True)
    return x.to(device=DEVICE, dtype=dtype)


def _coords(batch, rows, dtype, extent=30.0):
    return (torch.rand(batch, rows, 2, dtype=torch.float64) * extent).to(device=DEVICE, dtype=dtype)


def _grads(fn, inputs, upstream):
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return out.detach(), [g.detach() for g in grads]


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _assert_float32_rule(fused, dense32, exact, what):
    """docs/contract.md section 4 (tests/_tolerance.py): no further from float64 than max(2x the dense float32 error, 1e-5
    of the max-norm)."""
    assert_within([fused], [exact], [dense32], torch.float32, [what])


def _assert_float64_close(fused, inputs, upstream, exact, exact_grads):
    """float64: the output within 1e-10 and every gradient within 1e-9 (of its max-norm, or of 1) of the dense."""
    out, grads = _grads(fused, inputs, upstream)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-10)
    for g, e in zip(grads, exact_grads):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-9 * max(1.0, e.abs().max().item()))


def _check_exchange(shape, scale, normalize=False, dtype=torch.float32):
    batch, n, m, c = shape
    query = _features(batch, n, c, torch.float64, normalize)
    aux = _features(batch, m, c, torch.float64, normalize)
    upstream = torch.randn(batch, n, c, dtype=torch.float64, device=DEVICE)

    def dense(q, a):
        return reference.exchange(q, a, scale=scale)

    def fused(q, a):
        return _exchange_triton(q, a, scale)

    exact, exact_grads = _grads(dense, [query, aux], upstream)
    if dtype == torch.float64:
        return _assert_float64_close(fused, [query, aux], upstream, exact, exact_grads)
    args32 = [query.float(), aux.float()]
    dense_out, dense_grads = _grads(dense, args32, upstream)
    out, grads = _grads(fused, args32, upstream)
    assert out.dtype == torch.float32 and out.shape == (batch, n, c)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    _assert_float32_rule(out, dense_out, exact, "out")
    for name, g, d, e in zip(("grad query", "grad aux"), grads, dense_grads, exact_grads):
        _assert_float32_rule(g, d, e, name)


def _check_warp(shape, pow, scale, normalize=False, dtype=torch.float32):
    batch, n, m, c = shape
    src = _features(batch, n, c, torch.float64, normalize)
    tgt = _features(batch, m, c, torch.float64, normalize)
    src_xy, tgt_xy = _coords(batch, n, torch.float64), _coords(batch, m, torch.float64)
    upstream = torch.rand(batch, n, dtype=torch.float64, device=DEVICE) + 0.5

    def dense(s, t):
        return reference.warp_loss_rows(s, t, src_xy.to(s.dtype), tgt_xy.to(s.dtype), pow, scale)

    def fused(s, t):
        return _warp_rows_triton(s, t, src_xy.to(s.dtype), tgt_xy.to(s.dtype), pow, scale)

    exact, exact_grads = _grads(dense, [src, tgt], upstream)
    if dtype == torch.float64:
        return _assert_float64_close(fused, [src, tgt], upstream, exact, exact_grads)
    args32 = [src.float(), tgt.float()]
    dense_rows, dense_grads = _grads(dense, args32, upstream)
    rows, grads = _grads(fused, args32, upstream)
    assert rows.dtype == torch.float32 and rows.shape == (batch, n)
    assert torch.isfinite(rows).all() and all(torch.isfinite(g).all() for g in grads)
    loss, exact_loss = rows.double().mean().item(), exact.mean().item()
    assert abs(loss - exact_loss) <= 1e-5 * abs(exact_loss), f"loss {loss} vs float64 {exact_loss}"
    _assert_float32_rule(rows, dense_rows, exact, "rows")
    for name, g, d, e in zip(("grad src", "grad tgt"), grads, dense_grads, exact_grads):
        _assert_float32_rule(g, d, e, name)


# ------------------------------------------------------------------------------------------- values + grads


@pytest.mark.parametrize("op", ["exchange", "warp"])
def test_channels_256(op):
    if op == "exchange":
        _check_exchange(SHAPE_256, scale=1.0, normalize=True)
    else:
        _check_warp(SHAPE_256, 0.5, scale=1.0, normalize=True)


@pytest.mark.slow
def test_many_tiles(monkeypatch):
    """Tiles of 16 so that rows, columns and their masked remainders span several programs and loop steps."""
    small = _launch.LaunchConfig(block_n=16, block_m=16, num_warps=4, num_stages=2)
    monkeypatch.setattr(_launch, "launch_config", lambda *args, **kwargs: small)  # what kernel_constexprs reads
    _check_exchange((2, 53, 37, 20), scale=0.5, dtype=torch.float64)
    _check_warp((2, 53, 37, 20), 0.5, scale=0.5, dtype=torch.float64)
    _check_warp((1, 35, 67, 5), 0.7, scale=0.5)


def test_shared_target_coordinates():
    """tgt_xy given once as (M, 2) is the same as broadcasting it over the batch."""
    src, tgt = _features(2, 21, 8, torch.float64), _features(2, 30, 8, torch.float64)
    src_xy, tgt_xy = _coords(2, 21, torch.float64), _coords(1, 30, torch.float64)[0]
    rows = _warp_rows_triton(src, tgt, src_xy, tgt_xy, 0.5, 1.0)
    expected = _warp_rows_triton(src, tgt, src_xy, tgt_xy.expand(2, -1, -1).contiguous(), 0.5, 1.0)
    assert torch.equal(rows, expected)


def test_fourth_root_is_exact_at_zero_distance():
    """A source pixel that lands exactly on a target pixel has distance 0 (the FMA root must not give NaN)."""
    src, tgt = _features(1, 4, 16, torch.float32), _features(1, 4, 16, torch.float32)
    xy = _coords(1, 4, torch.float32)
    rows = _warp_rows_triton(src, tgt, xy, xy, 0.5, 1000.0)  # p concentrates on u == v: distance ~0
    exact = reference.warp_loss_rows(src.double(), tgt.double(), xy.double(), xy.double(), 0.5, 1000.0)
    assert torch.isfinite(rows).all()
    torch.testing.assert_close(rows.double(), exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["exchange", "warp"])
def test_non_finite_input_gives_non_finite_output(op):
    query, aux = _features(1, 9, 5, torch.float32), _features(1, 11, 5, torch.float32)
    query[0, 3, 2] = float("nan")
    if op == "exchange":
        out = _exchange_triton(query, aux, 1.0)
    else:
        out = _warp_rows_triton(query, aux, _coords(1, 9, torch.float32), _coords(1, 11, torch.float32), 0.5, 1.0)
    assert not torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- 16-bit data
# Triton's interpreter runs float16 (numpy has it) but not bfloat16 (its results there are garbage, with the
# kernels of every version of this project): bfloat16 runs only in tests/test_triton_gpu.py. float16 takes
# the same code paths: tensor-core tiles, the sign of the scale folded into the query/source tile, the
# rsqrt-based fourth roots on doubled coordinates, the three-tile loop of the warp-loss forward.

# (B, N, M, C): M = 200 = 3 x 64 + 8 runs the forward's three-tile loop and a partial tile, with C = C_PAD
# (16-byte row loads); C = 20 is ragged (masked channels, runtime row stride)
HALF_SHAPES = [(1, 70, 200, 64), (2, 33, 45, 20)]


def _assert_twice_dense(fused, dense, exact, what):
    """docs/contract.md section 4 for 16-bit inputs: error at most twice that of the dense computation in the same dtype."""
    err, dense_err = _max_err(fused, exact), _max_err(dense, exact)
    assert torch.isfinite(fused).all(), what
    assert err <= max(2 * dense_err, 1e-6 * exact.abs().max().item()), f"{what}: {err:.3g} vs dense {dense_err:.3g}"


@pytest.mark.parametrize("scale", [0.3, -0.3])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_exchange_float16(shape, scale):
    batch, n, m, c = shape
    inputs = [_features(batch, n, c, torch.float64, True), _features(batch, m, c, torch.float64, True)]
    upstream = torch.randn(batch, n, c, dtype=torch.float64, device=DEVICE)
    exact = _grads(lambda q, a: reference.exchange(q, a, scale=scale), inputs, upstream)
    half = [x.half() for x in inputs]
    dense = _grads(lambda q, a: reference.exchange(q, a, scale=scale), half, upstream)
    fused = _grads(lambda q, a: _exchange_triton(q, a, scale), half, upstream)
    for what, f, d, e in zip(("out", "grad query", "grad aux"), [fused[0], *fused[1]], [dense[0], *dense[1]],
                             [exact[0], *exact[1]]):
        _assert_twice_dense(f, d, e, what)


@pytest.mark.parametrize("scale", [0.3, -0.3])
@pytest.mark.parametrize("pow", POWS)
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_warp_loss_float16(shape, pow, scale):
    batch, n, m, c = shape
    inputs = [_features(batch, n, c, torch.float64, True), _features(batch, m, c, torch.float64, True)]
    src_xy, tgt_xy = _coords(batch, n, torch.float64), _coords(batch, m, torch.float64)
    upstream = torch.rand(batch, n, dtype=torch.float64, device=DEVICE) + 0.5

    def rows(fn, xy_dtype):
        return lambda s, t: fn(s, t, src_xy.to(xy_dtype), tgt_xy.to(xy_dtype), pow, scale)

    exact = _grads(rows(reference.warp_loss_rows, torch.float64), inputs, upstream)
    half = [x.half() for x in inputs]
    dense = _grads(rows(reference.warp_loss_rows, torch.float32), half, upstream)
    fused = _grads(rows(_warp_rows_triton, torch.float32), half, upstream)
    for what, f, d, e in zip(("rows", "grad src", "grad tgt"), [fused[0], *fused[1]], [dense[0], *dense[1]],
                             [exact[0], *exact[1]]):
        _assert_twice_dense(f, d, e, what)


def test_low_precision_fourth_roots():
    """The fourth roots of 16-bit features, given 4 r2 (doubled coordinates): rsqrt + two Newton steps within
    1e-5 relative (4.8e-6 in float32 arithmetic), rsqrt(rsqrt(.)) = sqrt(2) r2^0.25 within 1e-6, from
    sub-pixel to huge distances; the 1e-30 that _squared_distance adds makes r2 = 0 give ~3e-8, not NaN."""
    import triton.language as tl

    @triton.jit
    def roots(R2x4, Newton, Mufu, SIZE: tl.constexpr):
        offs = tl.arange(0, SIZE)
        r2x4 = tl.load(R2x4 + offs)
        tl.store(Newton + offs, _distance._fourth_root_newton(r2x4))
        tl.store(Mufu + offs, _distance._fourth_root_mufu(r2x4))

    r2 = torch.cat([torch.logspace(-12, 12, 1000, dtype=torch.float64), torch.rand(24, dtype=torch.float64) * 5000])
    r2x4 = (4 * r2).float().to(DEVICE)
    newton, mufu = torch.empty_like(r2x4), torch.empty_like(r2x4)
    roots[(1,)](r2x4, newton, mufu, SIZE=r2x4.numel())
    exact = (r2x4.double() / 4) ** 0.25
    assert ((newton.double() - exact).abs() / exact).max().item() < 1e-5
    assert ((mufu.double() / 2 ** 0.5 - exact).abs() / exact).max().item() < 1e-6
    zero = torch.full((16,), 4e-30, dtype=torch.float32, device=DEVICE)  # 4 x (0 + 1e-30)
    newton, mufu = torch.empty_like(zero), torch.empty_like(zero)
    roots[(1,)](zero, newton, mufu, SIZE=16)
    assert (newton.abs() < 1e-7).all() and (mufu.abs() < 1e-7).all()


def test_float16_non_finite_coordinates_give_non_finite_rows():
    """The rsqrt-based roots turn r2 = inf into a finite number; the launcher marks such pairs' rows non-finite."""
    src, tgt = _features(2, 9, 16, torch.float16), _features(2, 11, 16, torch.float16)
    src_xy, tgt_xy = _coords(2, 9, torch.float32), _coords(2, 11, torch.float32)
    tgt_xy[1, 4, 0] = float("inf")
    rows = _warp_rows_triton(src, tgt, src_xy, tgt_xy, 0.5, 1.0)
    assert torch.isfinite(rows[0]).all() and not torch.isfinite(rows[1]).any()


# ------------------------------------------------------------------------------------------------- property



@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)
@given(batch=st.integers(1, 2), n=st.integers(1, 40), m=st.integers(1, 40), c=st.integers(1, 40),
       pow=st.sampled_from(POWS), scale=st.floats(0.05, 3.0))
def test_property_random_shapes(batch, n, m, c, pow, scale):
    _check_exchange((batch, n, m, c), scale, dtype=torch.float64)
    _check_warp((batch, n, m, c), pow, scale, dtype=torch.float64)


# ------------------------------------------------------------------------------------ memory, determinism


@pytest.mark.parametrize("op", ["exchange", "warp"])
def test_no_tensor_grows_with_n_times_m(op):
    batch, n, m, c = 1, 211, 197, 4  # N·M = 41567 >> B·(N + M)·C = 1632
    a = _features(batch, n, c, torch.float32).requires_grad_(True)
    b = _features(batch, m, c, torch.float32).requires_grad_(True)
    src_xy, tgt_xy = _coords(batch, n, torch.float32), _coords(batch, m, torch.float32)
    with AllocationRecorder() as recorder:
        out = _exchange_triton(a, b, 1.0) if op == "exchange" else _warp_rows_triton(a, b, src_xy, tgt_xy, 0.5, 1.0)
        out.sum().backward()
    assert recorder.records, "the recorder saw nothing"
    assert recorder.largest_numel < n * m, f"{recorder.largest_description()} (N·M = {n * m})"
    assert a.grad is not None and b.grad is not None


@pytest.mark.parametrize("op", ["exchange", "warp"])
def test_bitwise_deterministic(op):
    a, b = _features(2, 45, 24, torch.float32), _features(2, 38, 24, torch.float32)
    src_xy, tgt_xy = _coords(2, 45, torch.float32), _coords(2, 38, torch.float32)
    upstream = torch.randn(2, 45, 24 if op == "exchange" else 1, device=DEVICE)

    def run():
        if op == "exchange":
            return _grads(lambda x, y: _exchange_triton(x, y, 0.9), [a, b], upstream)
        return _grads(lambda x, y: _warp_rows_triton(x, y, src_xy, tgt_xy, 0.5, 0.9), [a, b], upstream[..., 0])

    (out1, grads1), (out2, grads2) = run(), run()
    assert out1.shape == ((2, 45, 24) if op == "exchange" else (2, 45))
    assert torch.equal(out1, out2)
    assert all(torch.equal(g1, g2) for g1, g2 in zip(grads1, grads2))


# ---------------------------------------------------------------------------------- torch.library contract
