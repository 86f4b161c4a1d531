"""The drop-in losses and public ops on every backend (``"reference"`` included) against independent computations:
the per-pixel loops of tests/_loops.py (float64, from the equations) and the original repository's code
(``dve_kernels.original``); ``dve_kernels.reference`` only sets the float32 error yardstick (docs/contract.md section 4)."""

import pytest
import torch

import dve_kernels
from dve_kernels import functional, original, reference

import _loops  # tests/_loops.py

BACKENDS = ["reference", "cpu", "triton"]


def _skip_unavailable(backend):
    try:
        functional.resolve_backend(backend, torch.device("cpu"))
    except functional.BackendUnavailableError as error:
        pytest.skip(str(error))


def make_inputs(pairs, channels, height, width, stride, dtype):
    feats = torch.randn(2 * pairs, channels, height, width, dtype=dtype, requires_grad=True)
    grid = torch.rand(pairs, height * stride, width * stride, 2, dtype=dtype) * 2 - 1
    return feats, grid


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dve", [False, True])
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_drop_in_matches_original(backend, dve, dtype, rtol):
    _skip_unavailable(backend)
    feats64, grid64 = make_inputs(3, 5, 5, 7, 2, torch.float64)
    feats = feats64.detach().to(dtype).requires_grad_()
    grid = grid64.to(dtype)
    feats64 = feats.detach().double().requires_grad_()  # the same numbers as the tested input
    ours_fn = dve_kernels.dense_correlation_loss_dve if dve else dve_kernels.dense_correlation_loss
    ours = ours_fn((feats,), {"grid": grid}, backend=backend)
    (grad,) = torch.autograd.grad(ours, feats)
    # Truth: the per-pixel loops in float64.
    truth = _loops.dense_correlation_loss(feats64, grid.double(), num_aux=1 if dve else 0)
    (grad64,) = torch.autograd.grad(truth, feats64)
    torch.testing.assert_close(ours.double(), truth.detach(), rtol=rtol, atol=0)
    # The original's own code, in float64 up to its float32 sum of the DVE loss (its gradient stays float64).
    feats_orig = feats.detach().double().requires_grad_()
    theirs = (original.dense_correlation_loss_dve if dve else original.dense_correlation_loss)(
        (feats_orig,), {"grid": grid.double()})
    (grad_orig,) = torch.autograd.grad(theirs, feats_orig)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=max(rtol, 1e-6 if dve else 0), atol=0)
    # The dense float32 computation's own gradient error sets the float32 bound (docs/contract.md section 4).
    if dtype == torch.float32:
        dense = (reference.dense_correlation_loss_dve if dve else reference.dense_correlation_loss)(
            feats, {"grid": grid})
        (dense_grad,) = torch.autograd.grad(dense, feats)
        bound = max(2 * (dense_grad.double() - grad64).abs().max().item(), 1e-5 * grad64.abs().max().item())
    else:
        bound = 1e-10 * grad64.abs().max().item()
    # The original divides its float32 DVE sum by B·H·W in float32: its gradient is off by that rounding.
    original_bound = max(bound, 1e-6 * grad64.abs().max().item()) if dve else bound
    for name, expected, limit in (("loops", grad64, bound), ("original", grad_orig, original_bound)):
        error = (grad.double() - expected).abs().max().item()
        assert error <= limit, f"{backend} {dtype} dve={dve}: gradient error {error:.3g} against the {name} > {limit:.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_aux_and_module(backend):
    _skip_unavailable(backend)
    feats, grid = make_inputs(4, 3, 4, 5, 1, torch.float64)
    feats = feats.detach()
    for num_aux in (1, 3):
        ours = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=num_aux, backend=backend)
        expected = _loops.dense_correlation_loss(feats, grid, num_aux=num_aux)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=0)
    module = dve_kernels.DVELoss(pow=1.0, num_aux=2, backend=backend)
    torch.testing.assert_close(module(feats, grid), _loops.dense_correlation_loss(feats, grid, pow=1.0, num_aux=2),
                               rtol=1e-10, atol=0)
    plain = dve_kernels.DVELoss(dve=False, normalize_vectors=False, backend=backend)
    torch.testing.assert_close(plain(feats, grid),
                               _loops.dense_correlation_loss(feats, grid, normalize_vectors=False, num_aux=0),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_ops_match_loops(backend):
    _skip_unavailable(backend)
    query = torch.randn(2, 11, 6, dtype=torch.float64)
    aux = torch.randn(2, 13, 6, dtype=torch.float64)
    torch.testing.assert_close(dve_kernels.exchange(query, aux, scale=0.7, backend=backend),
                               _loops.exchange(query, aux, scale=0.7), rtol=1e-10, atol=1e-12)
    src_xy, tgt_xy = torch.rand(2, 11, 2, dtype=torch.float64) * 5, torch.rand(13, 2, dtype=torch.float64) * 5
    rows = _loops.warp_loss_rows(query, aux, src_xy, tgt_xy, pow=0.7, scale=0.3)
    for reduction, expected in (("mean", rows.mean()), ("sum", rows.sum()), ("none", rows)):
        torch.testing.assert_close(
            dve_kernels.warp_loss(query, aux, src_xy, tgt_xy, pow=0.7, scale=0.3, reduction=reduction,
                                  backend=backend),
            expected, rtol=1e-10, atol=1e-12)


def test_auto_picks_the_compiled_cpu_kernels_for_cpu_tensors():
    _skip_unavailable("cpu")
    cpu = torch.device("cpu")
    assert functional.resolve_backend("auto", cpu) == functional.resolve_backend("cpu", cpu) == "cpu"
    assert functional.resolve_backend("reference", cpu) == "reference"


class _RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the dtypes of the tensors that reach ``torch.ops.dve_kernels`` (name -> list of dtype tuples)."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "dve_kernels":
            dtypes = tuple(a.dtype for a in args if isinstance(a, torch.Tensor))
            self.calls.setdefault(func._schema.name.split("::")[-1], []).append(dtypes)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype, expected", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                             (torch.bfloat16, torch.float32), (torch.float16, torch.float32)],
                         ids=str)
def test_the_drop_in_hands_the_cpu_kernels_its_own_dtype(dtype, expected):
    """The precision policy (dve_kernels.precision): a float32 drop-in call computes in float32, float64 in float64,
    and 16-bit features reach the CPU's float32 kernels; the features of every op (forward and backward) have that
    dtype, and the loss has the features' coordinate dtype."""
    _skip_unavailable("cpu")
    feats, grid = make_inputs(2, 8, 5, 4, 2, torch.float64)
    feats = feats.detach().to(dtype).requires_grad_(True)
    recorder = _RecordOps()
    with recorder:
        loss = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid.to(dtype)}, backend="cpu")
        loss.backward()
    assert sorted(recorder.calls) == ["exchange_bwd", "exchange_fwd", "warp_loss_bwd", "warp_loss_fwd"]
    feature_args = {"exchange_fwd": 2, "exchange_bwd": 3, "warp_loss_fwd": 2, "warp_loss_bwd": 3}
    for name, calls in recorder.calls.items():
        for dtypes in calls:
            first = 1 if name == "warp_loss_bwd" else 0  # grad_rows is a coordinate-dtype tensor
            assert set(dtypes[first:first + feature_args[name]]) == {expected}, (name, dtypes)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert feats.grad.dtype == dtype
