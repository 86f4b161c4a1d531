"""Every bad input of docs/contract.md section 4 is refused before any kernel runs, naming the argument."""


import pytest
import torch

import dve_kernels
from dve_kernels import _library, functional, reference

B, N, M, C = 2, 5, 7, 3


def warp_args(**overrides):
    args = dict(src=torch.randn(B, N, C), tgt=torch.randn(B, M, C), src_xy=torch.rand(B, N, 2),
                tgt_xy=torch.rand(M, 2))
    args.update(overrides)
    return args


def call_warp_loss(fn, **overrides):
    args = warp_args(**{k: v for k, v in overrides.items() if k in ("src", "tgt", "src_xy", "tgt_xy")})
    kwargs = {k: v for k, v in overrides.items() if k not in args}
    return fn(args["src"], args["tgt"], args["src_xy"], args["tgt_xy"], **kwargs)


WARP_LOSS_FNS = [dve_kernels.warp_loss, reference.warp_loss]
EXCHANGE_FNS = [dve_kernels.exchange, reference.exchange]


@pytest.mark.parametrize("fn", WARP_LOSS_FNS)
@pytest.mark.parametrize("overrides,error,words", [
    (dict(src=torch.randn(B, N)), ValueError, ["src", "3 dimensions", "(B, N, C)", "got 2"]),
    (dict(tgt=torch.randn(B, M, C, 1)), ValueError, ["tgt", "3 dimensions", "got 4"]),
    (dict(tgt=torch.randn(B + 1, M, C)), ValueError, ["tgt", "batch size B", "(3, 7, 3)"]),
    (dict(tgt=torch.randn(B, M, C + 1)), ValueError, ["tgt", "channels C", "(2, 7, 4)"]),
    (dict(src_xy=torch.rand(B, N + 1, 2)), ValueError, ["src_xy", "source pixels N", "(2, 6, 2)"]),
    (dict(src_xy=torch.rand(B, N, 3)), ValueError, ["src_xy", "2 coordinates"]),
    (dict(tgt_xy=torch.rand(M + 2, 2)), ValueError, ["tgt_xy", "target pixels M", "(9, 2)"]),
    (dict(tgt_xy=torch.rand(B + 1, M, 2)), ValueError, ["tgt_xy", "batch size B"]),
    (dict(tgt_xy=torch.rand(M)), ValueError, ["tgt_xy", "(M, 2) or (B, M, 2)"]),
    (dict(src=torch.randn(B, 0, C)), ValueError, ["src", "non-empty", "(2, 0, 3)"]),
    (dict(tgt=torch.randn(B, M, 0)), ValueError, ["tgt", "non-empty"]),
    (dict(src=torch.ones(B, N, C, dtype=torch.int64)), TypeError, ["src", "floating-point", "torch.int64"]),
    (dict(tgt_xy=torch.ones(M, 2, dtype=torch.int32)), TypeError, ["tgt_xy", "floating-point", "torch.int32"]),
    (dict(src=[[1.0]]), TypeError, ["src", "torch.Tensor", "list"]),
    (dict(tgt=torch.randn(B, M, C, dtype=torch.float64)), TypeError, ["one dtype", "torch.float32", "torch.float64"]),
    (dict(tgt=torch.randn(B, M, C, device="meta")), ValueError, ["one device", "tgt on meta", "src on cpu"]),
    (dict(pow=0.0), ValueError, ["pow", "> 0", "0.0"]),
    (dict(pow=float("nan")), ValueError, ["pow", "finite"]),
    (dict(pow="1"), TypeError, ["pow", "real number", "str"]),
    (dict(scale=float("inf")), ValueError, ["scale", "finite"]),
    (dict(scale=torch.tensor(1.0)), TypeError, ["scale", "real number", "Tensor"]),
    (dict(reduction="avg"), ValueError, ["reduction", "'mean'", "'avg'"]),
])
def test_warp_loss_rejects(fn, overrides, error, words):
    with pytest.raises(error) as info:
        call_warp_loss(fn, **overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend: expected one of 'auto', 'triton', 'cpu', 'reference', got 'cuda'"):
        call_warp_loss(dve_kernels.warp_loss, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        dve_kernels.exchange(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="gpu")
    with pytest.raises(ValueError, match="backend: expected one of 'reference', 'auto', got 'cpu'"):
        reference.exchange(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="cpu")


@pytest.mark.parametrize("fn", EXCHANGE_FNS)
@pytest.mark.parametrize("query,aux,error,words", [
    (torch.randn(B, N), torch.randn(B, M, C), ValueError, ["query", "3 dimensions"]),
    (torch.randn(B, N, C), torch.randn(B + 1, M, C), ValueError, ["aux", "batch size B"]),
    (torch.randn(B, N, C), torch.randn(B, M, C + 2), ValueError, ["aux", "channels C", "(2, 7, 5)"]),
    (torch.randn(B, N, C), torch.randn(B, 0, C), ValueError, ["aux", "non-empty"]),
    (torch.ones(B, N, C, dtype=torch.int32), torch.randn(B, M, C), TypeError, ["query", "torch.int32"]),
    (torch.randn(B, N, C), torch.randn(B, M, C, dtype=torch.float16), TypeError, ["one dtype"]),
    (torch.randn(B, N, C), torch.randn(B, M, C, device="meta"), ValueError, ["one device", "aux on meta"]),
])
def test_exchange_rejects(fn, query, aux, error, words):
    with pytest.raises(error) as info:
        fn(query, aux)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


LOSS_FNS = [dve_kernels.dense_correlation_loss, dve_kernels.dense_correlation_loss_dve,
            reference.dense_correlation_loss, reference.dense_correlation_loss_dve]


@pytest.mark.parametrize("fn", LOSS_FNS)
@pytest.mark.parametrize("feats,grid,error,words", [
    (torch.randn(4, 3, 5), torch.rand(2, 5, 5, 2), ValueError, ["feats", "4 dimensions", "(2B, C, H, W)"]),
    (torch.randn(3, 3, 5, 5), torch.rand(2, 5, 5, 2), ValueError, ["feats", "even first dimension"]),
    (torch.randn(4, 3, 5, 5), torch.rand(3, 5, 5, 2), ValueError, ["meta['grid']", "batch size B", "(3, 5, 5, 2)"]),
    (torch.randn(4, 3, 5, 5), torch.rand(2, 5, 5, 3), ValueError, ["meta['grid']", "2 coordinates"]),
    (torch.randn(4, 3, 5, 5), torch.rand(2, 5, 5), ValueError, ["meta['grid']", "4 dimensions"]),
    # stride 2 from H, but W_in = 9 sub-samples to 5 columns, not 4: does not fit.
    (torch.randn(4, 3, 5, 4), torch.rand(2, 10, 9, 2), ValueError, ["does not fit", "5x4", "stride = H_in // H = 2"]),
    # H_in < H: stride 0.
    (torch.randn(4, 3, 5, 5), torch.rand(2, 4, 4, 2), ValueError, ["does not fit", "stride = H_in // H = 0"]),
    (torch.randn(4, 3, 0, 5), torch.rand(2, 5, 5, 2), ValueError, ["feats", "non-empty"]),
    (torch.ones(4, 3, 5, 5, dtype=torch.int64), torch.rand(2, 5, 5, 2), TypeError, ["feats", "torch.int64"]),
    (torch.randn(4, 3, 5, 5), torch.ones(2, 5, 5, 2, dtype=torch.int64), TypeError, ["meta['grid']", "torch.int64"]),
    ((), torch.rand(2, 5, 5, 2), ValueError, ["feats", "empty sequence"]),
    ("feats", torch.rand(2, 5, 5, 2), TypeError, ["feats", "torch.Tensor", "str"]),
])
def test_drop_in_losses_reject(fn, feats, grid, error, words):
    with pytest.raises(error) as info:
        fn(feats, {"grid": grid})
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("fn", LOSS_FNS)
def test_drop_in_losses_reject_bad_meta_and_pow(fn):
    feats, grid = torch.randn(4, 3, 5, 5), torch.rand(2, 10, 10, 2)
    with pytest.raises(TypeError, match=r"meta: expected a mapping with key 'grid'.*keys \['flow'\]"):
        fn(feats, {"flow": grid})
    with pytest.raises(TypeError, match="meta: expected a mapping"):
        fn(feats, grid)
    with pytest.raises(ValueError, match="pow: expected a number > 0, got -1.0"):
        fn(feats, {"grid": grid}, pow=-1.0)


@pytest.mark.parametrize("fn", [dve_kernels.dense_correlation_loss_dve, reference.dense_correlation_loss_dve])
def test_num_aux_bounds(fn):
    feats, grid = torch.randn(6, 3, 4, 4), torch.rand(3, 4, 4, 2)
    with pytest.raises(ValueError, match=r"num_aux: expected 1 <= num_aux <= max\(1, B - 1\) = 2 .* got 3"):
        fn(feats, {"grid": grid}, num_aux=3)
    with pytest.raises(ValueError, match="got 0"):
        fn(feats, {"grid": grid}, num_aux=0)
    with pytest.raises(TypeError, match="num_aux: expected an int, got float"):
        fn(feats, {"grid": grid}, num_aux=1.0)


def test_dve_loss_module_rejects():
    with pytest.raises(ValueError, match="num_aux"):
        dve_kernels.DVELoss(num_aux=0)
    with pytest.raises(ValueError, match="backend"):
        dve_kernels.DVELoss(backend="tpu")
    with pytest.raises(ValueError, match="grid"):
        dve_kernels.DVELoss()(torch.randn(4, 3, 5, 5), torch.rand(3, 5, 5, 2))


def test_cpu_backend_missing_says_how_to_build(monkeypatch):
    monkeypatch.setattr(_library, "CPU_KERNELS", False)
    monkeypatch.setattr(_library, "CPU_KERNELS_ERROR", "the C++ extension dve_kernels._C cannot be imported (test)")
    monkeypatch.setattr(functional, "_fallback_warned", [])
    with pytest.raises(functional.BackendUnavailableError, match=r"cannot be imported.*pip install --no-build-isolation -e \."):
        dve_kernels.exchange(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="cpu")
    assert not functional.cpu_extension_available()
    # "auto" falls back to the dense path, with a warning (once) that says why.
    with pytest.warns(RuntimeWarning, match="falls back to the dense 'reference' path"):
        out = dve_kernels.exchange(torch.randn(1, 2, 3), torch.randn(1, 4, 3))
    assert out.shape == (1, 2, 3)
def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(functional.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        dve_kernels.exchange(torch.randn(1, 2, 3), torch.randn(1, 2, 3), backend="triton")
    # meta tensors (shapes only) run the fused ops' fake kernels on every fused backend: memory estimates
    out = dve_kernels.exchange(torch.randn(1, 2, 3, device="meta"), torch.randn(1, 5, 3, device="meta"), backend="cpu")
    assert out.device.type == "meta" and out.shape == (1, 2, 3)


def test_validation_happens_before_any_kernel(monkeypatch):
    """A bad input never reaches a backend: the backend lookup is not even made."""
    def explode(*args, **kwargs):
        raise AssertionError("a backend was resolved for a bad input")
    monkeypatch.setattr(functional, "resolve_backend", explode)
    with pytest.raises(ValueError, match="channels C"):
        dve_kernels.exchange(torch.randn(1, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="does not fit"):
        dve_kernels.dense_correlation_loss_dve(torch.randn(4, 3, 5, 4), {"grid": torch.rand(2, 10, 9, 2)})


def test_channels_last_shape_is_named_as_a_layout_error():
    """A (2B, H, W, C) tensor given for (2B, C, H, W) is called out as a layout error, not a grid mismatch; a
    channels_last memory format of the right shape is accepted."""
    grid = torch.rand(2, 12, 10, 2) * 2 - 1
    with pytest.raises(ValueError, match=r"feats: expected the layout \(2B, C, H, W\).*channels last.*permute"):
        dve_kernels.dense_correlation_loss_dve(torch.randn(4, 6, 5, 8), {"grid": grid}, backend="reference")
    feats = torch.randn(4, 8, 6, 5)
    expected = dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend="reference")
    got = dve_kernels.dense_correlation_loss_dve(feats.to(memory_format=torch.channels_last), {"grid": grid},
                                                 backend="reference")
    assert torch.equal(got, expected)
