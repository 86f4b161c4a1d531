"""The torch.library contract (docs/contract.md section 4), for every backend: one schema per op, fakes whose strides are
what the kernels return, opcheck on contiguous, non-contiguous, expanded and offset inputs, the public functions
under ``torch.compile(fullgraph=True)`` with inductor, and double backward refused with a clear error (or, on the
dense path, right)."""

from __future__ import annotations


import pytest
import torch

import dve_kernels
from dve_kernels import _library, reference
from dve_kernels._env import triton_interpreter_requested

ops = torch.ops.dve_kernels
INTERPRETER = triton_interpreter_requested() and not torch.cuda.is_available()
FUSED = [pytest.param("cpu", marks=pytest.mark.skipif(not _library.CPU_KERNELS, reason="dve_kernels._C not built")),
         pytest.param("triton", marks=pytest.mark.skipif(not (INTERPRETER or torch.cuda.is_available()),
                                                         reason="needs a GPU or TRITON_INTERPRET=1"))]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _route(backend):
    return _library.interpreting(backend == "triton" and DEVICE == "cpu")


def test_one_schema_per_op():
    names = sorted(n for n in dir(ops) if not n.startswith("_"))
    assert [n for n in names if n in _library.SCHEMAS] == sorted(_library.SCHEMAS)
    assert not [n for n in names if n.endswith(("_cpu", "_triton"))], names
    for name, schema in _library.SCHEMAS.items():
        assert str(getattr(ops, name).default._schema) == f"dve_kernels::{name}{schema}"


def _layouts(x: torch.Tensor):
    """The same values as contiguous, non-contiguous (transposed storage), expanded batch and offset tensors."""
    batch = x.shape[0]
    transposed = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    offset = torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)[:, 1:]
    layouts = {"contiguous": x, "non_contiguous": transposed, "offset": offset}
    if batch == 1:
        layouts["expanded"] = x[:1].expand(3, *x.shape[1:])
    return layouts


def _op_args(layout, dtype):
    g = torch.Generator().manual_seed(3)
    query = torch.randn(1, 37, 5, generator=g, dtype=torch.float64).to(dtype)
    aux = torch.randn(1, 29, 5, generator=g, dtype=torch.float64).to(dtype)
    side = torch.float64 if dtype == torch.float64 else torch.float32
    src_xy = torch.rand(1, 37, 2, generator=g, dtype=side) * 20
    tgt_xy = torch.rand(1, 29, 2, generator=g, dtype=side) * 20
    query, aux, src_xy, tgt_xy = (_layouts(t)[layout] for t in (query, aux, src_xy, tgt_xy))
    return query.to(DEVICE), aux.to(DEVICE), src_xy.to(DEVICE), tgt_xy.to(DEVICE)


@pytest.mark.parametrize("layout", ["contiguous", "non_contiguous", "expanded", "offset"])
@pytest.mark.parametrize("backend", FUSED)
def test_opcheck_every_op_and_layout(backend, layout):
    dtype = torch.float64 if backend == "triton" and DEVICE == "cpu" else torch.float32
    query, aux, src_xy, tgt_xy = _op_args(layout, dtype)
    with _route(backend):
        out, lse = ops.exchange_fwd(query, aux, 0.3)
        rows, lse_rows = ops.warp_loss_fwd(query, aux, src_xy, tgt_xy, 0.5, 0.3)
    grad_out = torch.randn_like(query)
    grad_rows = torch.randn_like(rows)
    cases = [
        (ops.exchange_fwd.default, (query.detach().clone().requires_grad_(True), aux.detach().clone().requires_grad_(True), 0.3)),
        (ops.exchange_bwd.default, (grad_out, query, aux, out, lse, 0.3)),
        (ops.warp_loss_fwd.default, (query.detach().clone().requires_grad_(True), aux.detach().clone().requires_grad_(True),
                                     src_xy, tgt_xy, 0.5, 0.3)),
        (ops.warp_loss_bwd.default, (grad_rows, query, aux, src_xy, tgt_xy, rows, lse_rows, 0.5, 0.3)),
    ]
    tests = ("test_schema", "test_autograd_registration", "test_faketensor")
    for op, args in cases:
        if backend == "triton" and DEVICE == "cpu":
            # opcheck runs the op itself under its own modes; the interpreter routes at the dispatch-mode level,
            # so for it the contract is checked directly: the fake gives the real output's shape, dtype, strides
            with _route(backend):
                real = op(*args)
            with torch._subclasses.FakeTensorMode(allow_non_fake_inputs=True):
                fake = op(*args)
            for r, f in zip(real, fake):
                assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), op
        else:
            torch.library.opcheck(op, args, test_utils=tests)


@pytest.mark.parametrize("backend", FUSED)
def test_outputs_are_contiguous_whatever_the_inputs(backend):
    query, aux, src_xy, tgt_xy = _op_args("non_contiguous", torch.float64 if DEVICE == "cpu" else torch.float32)
    with _route(backend):
        out, lse = ops.exchange_fwd(query, aux, 1.0)
        rows, lse_rows = ops.warp_loss_fwd(query, aux, src_xy, tgt_xy, 0.5, 1.0)
    for t in (out, lse, rows, lse_rows):
        assert t.is_contiguous()
    assert lse.dtype == lse_rows.dtype == torch.float64  # one convention for the saved statistic


@pytest.mark.parametrize("backend", FUSED)
def test_saved_lse_is_the_natural_log_sum_exp(backend):
    query, aux, src_xy, tgt_xy = _op_args("contiguous", torch.float64)
    with _route(backend):
        _, lse = ops.exchange_fwd(query, aux, 0.7)
        _, lse_rows = ops.warp_loss_fwd(query, aux, src_xy, tgt_xy, 1.0, 0.7)
    expected = torch.logsumexp(0.7 * query @ aux.transpose(1, 2), dim=-1)
    assert torch.allclose(lse, expected, rtol=0, atol=1e-10)
    assert torch.allclose(lse_rows, expected, rtol=0, atol=1e-10)


def _public_loss(backend):
    def loss(feats, grid):
        warp = dve_kernels.dense_correlation_loss(feats, {"grid": grid}, backend=backend)
        dve = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=2, backend=backend)
        module = dve_kernels.DVELoss(pow=1.0, backend=backend)(feats, grid)
        return warp + dve + module
    return loss


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_torch_compile_fullgraph_public_api_inductor(backend):
    if not _library.CPU_KERNELS:
        pytest.skip("dve_kernels._C not built")
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(6, 8, 5, 7, generator=g)
    grid = torch.rand(3, 10, 14, 2, generator=g) * 2 - 1
    eager_feats = feats.clone().requires_grad_(True)
    compiled_feats = feats.clone().requires_grad_(True)
    eager = _public_loss(backend)(eager_feats, grid)
    eager.backward()
    torch._dynamo.reset()
    compiled_fn = torch.compile(_public_loss(backend), fullgraph=True, backend="inductor")
    compiled = compiled_fn(compiled_feats, grid)
    compiled.backward()
    assert torch.allclose(compiled, eager, rtol=1e-6, atol=0)
    assert torch.allclose(compiled_feats.grad, eager_feats.grad, rtol=1e-5, atol=1e-7)


def test_torch_compile_fullgraph_public_ops_inductor():
    if not _library.CPU_KERNELS:
        pytest.skip("dve_kernels._C not built")
    g = torch.Generator().manual_seed(6)
    src, tgt = torch.randn(2, 30, 8, generator=g), torch.randn(2, 25, 8, generator=g)
    src_xy, tgt_xy = torch.rand(2, 30, 2, generator=g) * 9, torch.rand(25, 2, generator=g) * 9

    def fn(s, t):
        return dve_kernels.warp_loss(dve_kernels.exchange(s, t, scale=0.5), t, src_xy, tgt_xy, pow=2.0)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="inductor")
    assert torch.allclose(compiled(src, tgt), fn(src, tgt), rtol=1e-6)


@pytest.mark.parametrize("backend", FUSED)
def test_double_backward_is_refused_with_a_clear_error(backend):
    g = torch.Generator().manual_seed(8)
    feats = torch.randn(4, 6, 3, 4, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_(True)
    grid = (torch.rand(2, 6, 8, 2, generator=g, dtype=torch.float64) * 2 - 1).to(DEVICE)
    loss = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend=backend)
    (grad,) = torch.autograd.grad(loss, feats, create_graph=True)  # first order is fine with create_graph
    exact = torch.autograd.grad(reference.dense_correlation_loss_dve(feats, {"grid": grid}), feats)[0]
    assert torch.allclose(grad, exact, rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad.pow(2).sum().backward()


def test_double_backward_on_the_dense_path_matches_finite_differences():
    g = torch.Generator().manual_seed(9)
    feats = torch.randn(4, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    grid = torch.rand(2, 4, 6, 2, generator=g, dtype=torch.float64) * 2 - 1

    def penalty(f):
        loss = dve_kernels.dense_correlation_loss_dve(f, {"grid": grid}, backend="reference")
        (grad,) = torch.autograd.grad(loss, f, create_graph=True)
        return grad.pow(2).sum()

    assert torch.autograd.gradcheck(penalty, (feats,), eps=1e-6, atol=1e-5)
