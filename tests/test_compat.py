"""The drop-in losses on every backend agree with the original repository's formulation."""

import pytest
import torch

import dve_kernels
from dve_kernels import functional, original, reference

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
    feats, grid = make_inputs(3, 5, 5, 7, 2, dtype)
    ours_fn = dve_kernels.dense_correlation_loss_dve if dve else dve_kernels.dense_correlation_loss
    theirs_fn = original.dense_correlation_loss_dve if dve else original.dense_correlation_loss  # float32 DVE sum
    ours = ours_fn((feats,), {"grid": grid}, backend=backend)
    (grad,) = torch.autograd.grad(ours, feats)
    # Truth: the dense formulation in float64 (equal to the original's up to its float32 cast of the DVE sum,
    # see test_reference.py), and the original's own code within that cast.
    feats64 = feats.detach().double().requires_grad_()
    theirs = (reference.dense_correlation_loss_dve if dve else reference.dense_correlation_loss)(
        (feats64,), {"grid": grid.double()})
    (grad64,) = torch.autograd.grad(theirs, feats64)
    torch.testing.assert_close(ours.double(), theirs_fn((feats64,), {"grid": grid.double()}).double(),
                               rtol=max(rtol, 1e-6 if dve else 0), atol=0)
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=rtol, atol=0)
    # The dense float32 computation's own gradient error sets the float32 bound (SPEC.md section 4).
    if dtype == torch.float32:
        dense = (reference.dense_correlation_loss_dve if dve else reference.dense_correlation_loss)(
            feats, {"grid": grid})
        (dense_grad,) = torch.autograd.grad(dense, feats)
        bound = max(2 * (dense_grad.double() - grad64).abs().max().item(), 1e-5 * grad64.abs().max().item())
    else:
        bound = 1e-10 * grad64.abs().max().item()
    assert (grad.double() - grad64).abs().max().item() <= bound


@pytest.mark.parametrize("backend", BACKENDS)
def test_num_aux_and_module(backend):
    _skip_unavailable(backend)
    feats, grid = make_inputs(4, 3, 4, 5, 1, torch.float64)
    for num_aux in (1, 3):
        ours = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=num_aux, backend=backend)
        expected = reference.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=num_aux)
        torch.testing.assert_close(ours, expected, rtol=1e-10, atol=0)
    module = dve_kernels.DVELoss(pow=1.0, num_aux=2, backend=backend)
    torch.testing.assert_close(module(feats, grid),
                               reference.dense_correlation_loss_dve(feats, {"grid": grid}, pow=1.0, num_aux=2),
                               rtol=1e-10, atol=0)
    plain = dve_kernels.DVELoss(dve=False, normalize_vectors=False, backend=backend)
    torch.testing.assert_close(plain(feats, grid),
                               reference.dense_correlation_loss(feats, {"grid": grid}, normalize_vectors=False),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_public_ops_match_reference(backend):
    _skip_unavailable(backend)
    query = torch.randn(2, 11, 6, dtype=torch.float64)
    aux = torch.randn(2, 13, 6, dtype=torch.float64)
    torch.testing.assert_close(dve_kernels.exchange(query, aux, scale=0.7, backend=backend),
                               reference.exchange(query, aux, scale=0.7), rtol=1e-10, atol=1e-12)
    src_xy, tgt_xy = torch.rand(2, 11, 2, dtype=torch.float64) * 5, torch.rand(13, 2, dtype=torch.float64) * 5
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            dve_kernels.warp_loss(query, aux, src_xy, tgt_xy, pow=0.7, scale=0.3, reduction=reduction,
                                  backend=backend),
            reference.warp_loss(query, aux, src_xy, tgt_xy, pow=0.7, scale=0.3, reduction=reduction),
            rtol=1e-10, atol=1e-12)


def test_auto_picks_the_compiled_cpu_kernels_for_cpu_tensors():
    _skip_unavailable("cpu")
    cpu = torch.device("cpu")
    assert functional.resolve_backend("auto", cpu) == functional.resolve_backend("cpu", cpu) == "fused"
    assert functional.resolve_backend("reference", cpu) == "dense"
