"""What is particular to the C++ kernels (``backend="cpu"``): bf16/fp16 storage, logits of +-1e4, non-finite inputs,
bitwise determinism across runs, thread counts and instruction sets, the memory promise (no tensor of N·M
elements), the binding's own checks, and the package without the extension. Values and gradients over every
backend are in test_ops_numerics.py, registration in test_ops_registration.py, the seed sweeps in
test_ops_sweeps.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import dve_kernels
from dve_kernels import reference

from _tolerance import assert_within  # noqa: E402
from dve_kernels import _library  # noqa: E402

if not _library.CPU_KERNELS:
    if os.environ.get("CI") == "true":  # CI builds the extension: its absence is a failure, not a skip
        raise RuntimeError(f"CI without the C++ kernels: {_library.CPU_KERNELS_ERROR}")
    pytest.skip(f"dve_kernels._C is not built: {_library.CPU_KERNELS_ERROR}", allow_module_level=True)


def _exchange_cpu(query, aux, scale):
    return dve_kernels.exchange(query, aux, scale=scale, backend="cpu")


def _warp_rows_cpu(src, tgt, src_xy, tgt_xy, pow, scale):
    return dve_kernels.warp_loss(src, tgt, src_xy, tgt_xy, pow=pow, scale=scale, reduction="none", backend="cpu")
ops = torch.ops.dve_kernels
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (B, N, M, C): B = 1, N != M, odd and prime sizes, tile edges (64, 65, 129), every channel padding bucket
SHAPES = [
    (1, 1, 1, 1),
    (2, 37, 53, 1),
    (1, 97, 61, 3),
    (2, 131, 67, 16),
    (1, 67, 131, 33),
    (3, 65, 64, 64),
    (1, 129, 97, 256),
]
POWS = (0.5, 1.0, 2.0, 0.7)


def _features(batch, rows, channels, dtype=torch.float64, normalize=True, generator=None):
    """Random embeddings; ``normalize`` mimics normalize_vectors=True (unit length x 20: logits up to 400)."""
    x = torch.randn(batch, rows, channels, dtype=torch.float64, generator=generator)
    if normalize:
        x = 20 * x / x.norm(dim=-1, keepdim=True)
    return x.to(dtype)


def _coords(batch, rows, dtype=torch.float64, extent=40.0):
    return (torch.rand(batch, rows, 2, dtype=torch.float64) * extent).to(dtype)


def _accumulate_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _run(fn, inputs, upstream):
    """fn(*inputs) and the gradients of <fn(*inputs), upstream> w.r.t. every input."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    return [out.detach()] + [g.detach() for g in grads]


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _norm(x):
    return x.double().abs().max().item()


def _exchange_cases(shape, dtype, scale=1.0, normalize=True):
    batch, n, m, channels = shape
    query = _features(batch, n, channels, normalize=normalize)
    aux = _features(batch, m, channels, normalize=normalize)
    upstream = torch.randn(batch, n, channels, dtype=torch.float64)
    exact = _run(lambda q, a: reference.exchange(q, a, scale=scale), [query, aux], upstream)
    fused = _run(lambda q, a: _exchange_cpu(q, a, scale), [query.to(dtype), aux.to(dtype)], upstream)
    dense = _run(lambda q, a: reference.exchange(q, a, scale=scale), [query.to(dtype), aux.to(dtype)], upstream)
    return exact, fused, dense


def _warp_cases(shape, dtype, pow, scale=1.0, normalize=True):
    batch, n, m, channels = shape
    src = _features(batch, n, channels, normalize=normalize)
    tgt = _features(batch, m, channels, normalize=normalize)
    src_xy, tgt_xy = _coords(batch, n), _coords(batch, m)
    upstream = torch.rand(batch, n, dtype=torch.float64) - 0.3
    xy_dtype = _accumulate_dtype(dtype)

    def fused_fn(s, t):
        return _warp_rows_cpu(s, t, src_xy.to(xy_dtype), tgt_xy.to(xy_dtype), pow, scale)

    def dense_fn(s, t):
        return reference.warp_loss_rows(s, t, src_xy.to(xy_dtype), tgt_xy.to(xy_dtype), pow, scale)

    exact = _run(lambda s, t: reference.warp_loss_rows(s, t, src_xy, tgt_xy, pow, scale), [src, tgt], upstream)
    fused = _run(fused_fn, [src.to(dtype), tgt.to(dtype)], upstream)
    dense = _run(dense_fn, [src.to(dtype), tgt.to(dtype)], upstream)
    return exact, fused, dense


NAMES_EXCHANGE = ("out", "grad_query", "grad_aux")
NAMES_WARP = ("rows", "grad_src", "grad_tgt")


def _assert_float32_rule(exact, fused, dense, names):
    """docs/contract.md section 4 (tests/_tolerance.py), float32 results for float32 inputs."""
    for name, f in zip(names, fused):
        assert f.dtype == torch.float32, f"{name}: float32 inputs must give float32 results, got {f.dtype}"
    assert_within(fused, exact, dense, torch.float32, names)


def _assert_low_precision_rule(exact, fused, dense, names, dtype):
    """docs/contract.md section 4 (16-bit storage; tests/_tolerance.py): at most twice the dense computation's error in the
    same dtype, with its floor for dense errors that are zero by luck (one-hot probabilities, C = 1)."""
    assert_within(fused, exact, dense, dtype, names)


# ------------------------------------------------------------------------------------------------ values, grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_exchange_16bit_storage(shape, dtype):
    exact, fused, dense = _exchange_cases(shape, dtype, scale=0.05)
    assert fused[0].dtype == dtype
    _assert_low_precision_rule(exact, fused, dense, NAMES_EXCHANGE, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES[1:])
def test_warp_loss_16bit_storage(shape, dtype):
    exact, fused, dense = _warp_cases(shape, dtype, 0.5, scale=0.05)
    assert fused[0].dtype == torch.float32
    assert fused[1].dtype == dtype
    _assert_low_precision_rule(exact, fused, dense, NAMES_WARP, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_logits_of_1e4_stay_finite_and_correct(dtype):
    """scale 25 with normalised x20 vectors: logits up to +-1e4 (near one-hot softmax)."""
    shape = (1, 33, 45, 8)
    for exact, fused, dense, names in (
        (*_exchange_cases(shape, dtype, scale=25.0), NAMES_EXCHANGE),
        (*_warp_cases(shape, dtype, 0.5, scale=25.0), NAMES_WARP),
    ):
        for name, e, f in zip(names, exact, fused):
            assert torch.isfinite(f).all(), name
            if dtype == torch.float64:
                assert _err(f, e) <= 1e-9 * max(_norm(e), 1.0), name
        if dtype == torch.float32:
            assert_within(fused, exact, dense, dtype, names)


def test_non_finite_inputs_give_non_finite_outputs():
    query = _features(1, 9, 4, torch.float32)
    aux = _features(1, 11, 4, torch.float32)
    for bad in (float("nan"), float("inf")):
        q = query.clone()
        q[0, 3, 1] = bad
        out = _exchange_cpu(q, aux, 1.0)
        assert not torch.isfinite(out[0, 3]).all()
        rows = _warp_rows_cpu(q, aux, _coords(1, 9, torch.float32), _coords(1, 11, torch.float32), 0.5, 1.0)
        assert not torch.isfinite(rows[0, 3])
        assert not torch.isfinite(rows.mean())


# ------------------------------------------------------------------------------------------------ determinism


def _dve_forward_backward(src, tgt, aux, src_xy, tgt_xy):
    src, tgt, aux = (x.detach().clone().requires_grad_(True) for x in (src, tgt, aux))
    reconstructed = _exchange_cpu(src, aux, 1.0)
    loss = _warp_rows_cpu(reconstructed, tgt, src_xy, tgt_xy, 0.5, 1.0).mean()
    loss.backward()
    return [loss.detach(), src.grad, tgt.grad, aux.grad]


def test_bitwise_deterministic_across_runs_and_thread_counts():
    batch, n, m, channels = 2, 300, 257, 33
    inputs = (_features(batch, n, channels, torch.float32), _features(batch, m, channels, torch.float32),
              _features(batch, m, channels, torch.float32), _coords(batch, n, torch.float32),
              _coords(batch, m, torch.float32))
    threads = torch.get_num_threads()
    try:
        first = _dve_forward_backward(*inputs)
        second = _dve_forward_backward(*inputs)
        torch.set_num_threads(1)
        single = _dve_forward_backward(*inputs)
        torch.set_num_threads(3)
        three = _dve_forward_backward(*inputs)
    finally:
        torch.set_num_threads(threads)
    for other in (second, single, three):
        for a, b in zip(first, other):
            assert torch.equal(a, b)


_ISA_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {root!r})
    import dve_kernels
    from dve_kernels import _library
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 70, 33, generator=g); a = torch.randn(2, 45, 33, generator=g)
    xy = torch.rand(2, 70, 2, generator=g) * 30; txy = torch.rand(2, 45, 2, generator=g) * 30
    q.requires_grad_(); a.requires_grad_()
    out = dve_kernels.exchange(q, a, scale=0.3, backend="cpu")
    rows = dve_kernels.warp_loss(out, a, xy, txy, pow=0.5, scale=0.3, reduction="none", backend="cpu")
    rows.sum().backward()
    torch.save({{"isa": _library.KERNEL_ISA, "rows": rows.detach(), "gq": q.grad, "ga": a.grad}}, sys.argv[1])
""")


def _supported_isas():
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isas = ["generic"]
    if " avx2" in flags and " fma" in flags:
        isas.append("avx2")
    if all(f" {flag}" in flags for flag in ("avx512f", "avx512bw", "avx512dq", "avx512vl")):
        isas.append("avx512")
    return isas


def test_every_instruction_set_gives_the_same_numbers(tmp_path):
    """python/isa_*.cpp: the generic, AVX2 and (where the CPU has it) AVX-512 builds agree to rounding."""
    results = {}
    for isa in _supported_isas():
        path = tmp_path / f"{isa}.pt"
        env = dict(os.environ, DVE_KERNELS_ISA=isa, OMP_NUM_THREADS="2")
        subprocess.run([sys.executable, "-c", _ISA_SCRIPT.format(root=ROOT), str(path)], check=True, env=env,
                       timeout=120)
        results[isa] = torch.load(path)
        assert results[isa]["isa"] == isa
    base = results["generic"]
    for isa, got in results.items():
        for key in ("rows", "gq", "ga"):
            assert _err(got[key], base[key]) <= 1e-5 * _norm(base[key]), (isa, key)


def test_unknown_instruction_set_makes_backend_cpu_say_why():
    env = dict(os.environ, DVE_KERNELS_ISA="sse9")
    script = (f"import sys, torch; sys.path.insert(0, {ROOT!r}); import dve_kernels\n"
              "x = torch.randn(1, 3, 2)\n"
              "try:\n    dve_kernels.exchange(x, x, backend='cpu')\nexcept RuntimeError as error:\n"
              "    print(error)\nelse:\n    print('ran')\n")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DVE_KERNELS_ISA=sse9" in result.stdout
    assert "pip install --no-build-isolation -e ." in result.stdout


# ------------------------------------------------------------------------------------------------ memory


def test_no_tensor_grows_with_n_times_m():
    """docs/contract.md section 4, at a size where N·M (1.3M) is far above B·(N + M)·C (82K)."""
    from dve_kernels.memory import AllocationRecorder

    batch, n, m, channels = 1, 1031, 1283, 32
    src = _features(batch, n, channels, torch.float32).requires_grad_(True)
    tgt = _features(batch, m, channels, torch.float32).requires_grad_(True)
    aux = _features(batch, m, channels, torch.float32).requires_grad_(True)
    src_xy, tgt_xy = _coords(batch, n, torch.float32), _coords(batch, m, torch.float32)
    with AllocationRecorder() as recorder:
        reconstructed = _exchange_cpu(src, aux, 1.0)
        loss = _warp_rows_cpu(reconstructed, tgt, src_xy, tgt_xy, 0.5, 1.0).mean()
        loss.backward()
    assert recorder.records, "the recorder saw nothing"
    assert recorder.largest_numel < n * m, recorder.largest_description()
    assert recorder.largest_numel <= batch * max(n, m) * channels, recorder.largest_description()


# ------------------------------------------------------------------------------------------------ registration


def _op_samples(dtype):
    batch, n, m, channels = 2, 13, 9, 5
    query = _features(batch, n, channels, dtype)
    aux = _features(batch, m, channels, dtype)
    xy_dtype = _accumulate_dtype(dtype)
    src_xy, tgt_xy = _coords(batch, n, xy_dtype), _coords(batch, m, xy_dtype)
    out, lse = ops.exchange_fwd(query, aux, 0.3)
    rows, lse_rows = ops.warp_loss_fwd(query, aux, src_xy, tgt_xy, 0.5, 0.3)
    grad_out = torch.randn_like(out)
    grad_rows = torch.randn_like(rows)
    return [
        (ops.exchange_fwd.default, (query.clone().requires_grad_(True), aux.clone().requires_grad_(True), 0.3)),
        (ops.exchange_bwd.default, (grad_out, query, aux, out, lse, 0.3)),
        (ops.warp_loss_fwd.default,
         (query.clone().requires_grad_(True), aux.clone().requires_grad_(True), src_xy, tgt_xy, 0.5, 0.3)),
        (ops.warp_loss_bwd.default, (grad_rows, query, aux, src_xy, tgt_xy, rows, lse_rows, 0.5, 0.3)),
    ]


def test_binding_rejects_bad_tensors_with_a_message():
    query = torch.randn(2, 5, 3)
    with pytest.raises(RuntimeError, match="aux .* must agree in batch and channels"):
        ops.exchange_fwd(query, torch.randn(2, 4, 4), 1.0)
    with pytest.raises(RuntimeError, match="must be float32, float64, bfloat16 or float16"):
        ops.exchange_fwd(query.int(), torch.randn(2, 4, 3).int(), 1.0)
    with pytest.raises(RuntimeError, match="src_xy must be Float"):
        ops.warp_loss_fwd(query, query, torch.zeros(2, 5, 2, dtype=torch.float64), torch.zeros(2, 5, 2), 0.5, 1.0)


# ------------------------------------------------------------------------------------------------ without _C


def test_package_imports_without_the_extension():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        sys.modules["dve_kernels._C"] = None  # as if it was never built
        import torch
        import dve_kernels
        from dve_kernels import functional
        assert not functional.cpu_extension_available()
        from dve_kernels.functional import BackendUnavailableError
        x = torch.randn(1, 3, 2)
        try:
            dve_kernels.exchange(x, x, backend="cpu")
        except BackendUnavailableError as error:
            assert "pip install --no-build-isolation -e ." in str(error), error
        else:
            raise AssertionError("backend='cpu' ran without _C")
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = dve_kernels.exchange(x, x)  # auto: the dense path, with a warning
        assert out.shape == x.shape and any("falls back" in str(w.message) for w in caught)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
