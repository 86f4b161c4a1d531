"""The dense reference against independent brute-force loops (tests/_loops.py), hand-checkable cases and the
original's code."""

import pytest
import torch

import dve_kernels
from dve_kernels import original, reference

import _loops  # noqa: E402  (tests/_loops.py: independent per-pixel loops)

F64 = torch.float64


CASES = [
    # pairs, C, H, W, stride, pow, normalize_vectors
    (1, 1, 3, 4, 1, 0.5, True),
    (2, 3, 3, 5, 2, 1.0, True),
    (3, 5, 2, 3, 1, 2.0, False),
    (2, 5, 4, 3, 2, 0.5, False),
]


def make_inputs(pairs, channels, height, width, stride, dtype=F64, requires_grad=True):
    feats = torch.randn(2 * pairs, channels, height, width, dtype=dtype, requires_grad=requires_grad)
    grid = torch.rand(pairs, height * stride, width * stride, 2, dtype=dtype) * 2.2 - 1.1
    return feats, grid


@pytest.mark.parametrize("pairs,channels,height,width,stride,pow,normalize", CASES)
@pytest.mark.parametrize("dve", [False, True])
def test_reference_matches_brute_force(pairs, channels, height, width, stride, pow, normalize, dve):
    feats, grid = make_inputs(pairs, channels, height, width, stride)
    fn = reference.dense_correlation_loss_dve if dve else reference.dense_correlation_loss
    loss = fn(feats, {"grid": grid}, pow=pow, normalize_vectors=normalize)
    (grad,) = torch.autograd.grad(loss, feats)
    expected = _loops.dense_correlation_loss(feats, grid, pow, normalize, num_aux=1 if dve else 0)
    (expected_grad,) = torch.autograd.grad(expected, feats)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_reference_num_aux_matches_brute_force():
    feats, grid = make_inputs(4, 3, 2, 3, 1)
    loss = reference.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=3)
    torch.testing.assert_close(loss, _loops.dense_correlation_loss(feats, grid, 0.5, True, num_aux=3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dve", [False, True])
def test_reference_matches_original_repository(dve):
    """The drop-in numbers: the original's per-pair loop (with its C x H x W x h x w product) in float64."""
    feats, grid = make_inputs(3, 8, 7, 5, 2)
    ours = (reference.dense_correlation_loss_dve if dve else reference.dense_correlation_loss)(feats, {"grid": grid})
    theirs = (original.dense_correlation_loss_dve if dve else original.dense_correlation_loss)(feats, {"grid": grid})
    # The original's DVE loss sums in float32 (``L.float().sum()``), whatever the input dtype.
    tolerance = 1e-6 if dve else 1e-12
    torch.testing.assert_close(ours, theirs, rtol=tolerance, atol=0, check_dtype=False)
    # The public drop-in on the dense backend, and a tuple feats as the original passes it, against the original.
    public = (dve_kernels.dense_correlation_loss_dve if dve else dve_kernels.dense_correlation_loss)(
        (feats,), {"grid": grid}, backend="reference")
    torch.testing.assert_close(public, theirs, rtol=tolerance, atol=0, check_dtype=False)
    # Gradients: float64 but for the original's float32 division of its DVE sum by B·H·W.
    (grad_public,) = torch.autograd.grad(public, feats)
    (grad_theirs,) = torch.autograd.grad(
        (original.dense_correlation_loss_dve if dve else original.dense_correlation_loss)(feats, {"grid": grid}),
        feats)
    torch.testing.assert_close(grad_public, grad_theirs, rtol=tolerance, atol=1e-13)


def test_gradcheck_warp_loss_and_exchange():
    src = torch.randn(2, 5, 3, dtype=F64, requires_grad=True)
    tgt = torch.randn(2, 7, 3, dtype=F64, requires_grad=True)
    src_xy = torch.rand(2, 5, 2, dtype=F64) * 6
    tgt_xy = torch.rand(7, 2, dtype=F64) * 6
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(
            lambda s, t: reference.warp_loss(s, t, src_xy, tgt_xy, pow=0.7, scale=1.3, reduction=reduction),
            (src, tgt))
    assert torch.autograd.gradcheck(lambda q, a: reference.exchange(q, a, scale=0.8), (src, tgt))


def test_gradcheck_drop_in_losses():
    feats, grid = make_inputs(2, 2, 3, 3, 1)
    assert torch.autograd.gradcheck(lambda f: reference.dense_correlation_loss(f, {"grid": grid}), (feats,))
    assert torch.autograd.gradcheck(lambda f: reference.dense_correlation_loss_dve(f, {"grid": grid}), (feats,))


def test_warp_loss_reductions_and_shared_targets():
    src, tgt = torch.randn(3, 6, 4, dtype=F64), torch.randn(3, 5, 4, dtype=F64)
    src_xy, tgt_xy = torch.rand(3, 6, 2, dtype=F64) * 9, torch.rand(5, 2, dtype=F64) * 9
    rows = reference.warp_loss(src, tgt, src_xy, tgt_xy, pow=1.0, scale=2.0, reduction="none")
    assert rows.shape == (3, 6)
    # An independent statement of one row: softmax of scaled dots, times distances.
    b, u = 1, 4
    p = torch.softmax(2.0 * tgt[b] @ src[b, u], 0)
    d = (src_xy[b, u] - tgt_xy).norm(dim=1)
    torch.testing.assert_close(rows[b, u], (p * d).sum(), rtol=1e-13, atol=0)
    torch.testing.assert_close(reference.warp_loss(src, tgt, src_xy, tgt_xy, pow=1.0, scale=2.0, reduction="sum"),
                               rows.sum())
    torch.testing.assert_close(reference.warp_loss(src, tgt, src_xy, tgt_xy, pow=1.0, scale=2.0), rows.mean())
    per_batch = reference.warp_loss(src, tgt, src_xy, tgt_xy.expand(3, 5, 2), pow=1.0, scale=2.0, reduction="none")
    torch.testing.assert_close(per_batch, rows, rtol=0, atol=0)


def test_perfect_one_hot_match_gives_the_loss_of_the_true_warp():
    """One-hot embeddings that match perfectly: the softmax is a delta and the loss is the warp's own error."""
    height, width = 4, 5
    n = height * width
    permutation = torch.randperm(n)
    offsets = torch.randn(1, n, 2, dtype=F64) * 0.3
    # Source pixel u is pixel permutation[u] of the warped image, off by offsets[u].
    src_maps = torch.eye(n, dtype=F64).reshape(n, height, width)
    tgt_maps = torch.zeros_like(src_maps)
    tgt_maps[:, permutation // width, permutation % width] = torch.eye(n, dtype=F64)
    feats = torch.stack([src_maps, tgt_maps])
    positions = torch.stack([permutation % width, permutation // width], dim=-1).to(F64)[None]
    g_u = positions + offsets
    grid = (2 * g_u / torch.tensor([width - 1.0, height - 1.0], dtype=F64) - 1).reshape(1, height, width, 2)
    for pow in (0.5, 1.0, 2.0):
        loss = reference.dense_correlation_loss(feats, {"grid": grid}, pow=pow)
        expected = offsets.norm(dim=-1).pow(pow).mean()
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)


def test_exchange_with_itself_gives_back_the_source_when_sharp():
    query = torch.nn.functional.normalize(torch.randn(2, 9, 16, dtype=F64), dim=-1) * 20
    rebuilt = reference.exchange(query, query, scale=20.0)
    torch.testing.assert_close(rebuilt, query, rtol=0, atol=1e-9)
    # And with a soft softmax it is a convex combination: strictly different.
    assert (reference.exchange(query, query, scale=1e-3) - query).abs().max() > 1.0


def test_num_aux_is_one_softmax_over_the_concatenation():
    pairs, num_aux = 4, 3
    feats, grid = make_inputs(pairs, 5, 3, 4, 1, requires_grad=False)
    loss = reference.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=num_aux)
    x = torch.nn.functional.normalize(feats[0::2].flatten(2).transpose(1, 2), dim=-1) * 20
    y = torch.nn.functional.normalize(feats[1::2].flatten(2).transpose(1, 2), dim=-1) * 20
    rebuilt = []
    for b in range(pairs):
        aux = torch.cat([x[(b + k) % pairs] for k in range(1, num_aux + 1)])  # (num_aux * N, C)
        rebuilt.append(torch.softmax(x[b] @ aux.T, dim=-1) @ aux)
    src_xy = ((grid + 1) / 2 * torch.tensor([3.0, 2.0], dtype=F64)).reshape(pairs, -1, 2)
    ii, jj = torch.meshgrid(torch.arange(3.0, dtype=F64), torch.arange(4.0, dtype=F64), indexing="ij")
    tgt_xy = torch.stack([jj, ii], -1).reshape(-1, 2)
    expected = reference.warp_loss(torch.stack(rebuilt), y, src_xy, tgt_xy)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    # More auxiliary images change the answer (the joint softmax sees them all).
    assert not torch.allclose(loss, reference.dense_correlation_loss_dve(feats, {"grid": grid}, num_aux=1))


def test_non_finite_inputs_give_non_finite_loss():
    feats, grid = make_inputs(2, 3, 3, 3, 1, requires_grad=False)
    feats[1, 0, 1, 1] = float("nan")
    assert not torch.isfinite(reference.dense_correlation_loss(feats, {"grid": grid}))
    feats, grid = make_inputs(2, 3, 3, 3, 1, requires_grad=False)
    grid[0, 0, 0, 0] = float("inf")
    assert not torch.isfinite(dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend="reference"))
