"""The implementations that the benchmarks compare, on the same inputs.

Three kernels, each a function of the inputs that returns a scalar to differentiate:

- ``exchange``: ``sum(exchange(src, aux) * probe)`` (a fixed random probe makes the backward non-trivial);
- ``warp_loss``: the warp loss (eq. 3) of prepared embeddings;
- ``dve``: the whole drop-in DVE loss from ``(feats, grid)`` (eq. 6).

Providers:

- ``original``: the original repository's per-pair loop (``dve_kernels.original``), with its ``C x N x M``
  product in the exchange, the thing users switch from;
- ``dense``: ``dve_kernels.reference`` (batched matmul + softmax); ``dense-compiled``: the same under ``torch.compile``;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` for the exchange (keys = values = aux);
- ``keops``: pykeops ``sumsoftmaxweight`` for both steps, where pykeops is installed;
- ``dve_kernels``: the fused backend for the device (Triton on CUDA, the C++ kernels on the CPU).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import dve_kernels
from dve_kernels import conventions, functional, original, reference

PROVIDERS = ("original", "dense", "dense-compiled", "sdpa", "keops", "dve_kernels")
KERNELS = ("exchange", "warp_loss", "dve")


class Unavailable(Exception):
    """This provider cannot run this kernel here (the message says why)."""


# ----------------------------------------------------------------------------------------------- inputs
def make_inputs(kernel: str, side: int, channels: int, batch: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Inputs for ``kernel`` at a ``side x side`` feature map (N = M = side²), with gradients where they flow."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        if device == "meta":  # shapes only: nothing is allocated, whatever the size
            return torch.empty(*shape, dtype=dtype, device="meta")
        t = torch.randn(*shape, generator=generator) * scale
        return t.to(device=device, dtype=dtype)

    n = side * side
    if kernel == "dve":
        feats = randn(2 * batch, channels, side, side).requires_grad_()
        if device == "meta":
            return {"feats": feats, "grid": torch.empty(batch, side, side, 2, device="meta")}
        # A mild random affine warp of the identity grid, at stride 1.
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
        identity = torch.stack((xs, ys), -1)[None]
        grid = identity * (1 + 0.05 * torch.randn(batch, 1, 1, 2, generator=generator)) \
            + 0.05 * torch.randn(batch, 1, 1, 2, generator=generator)
        return {"feats": feats, "grid": grid.to(device)}
    src = conventions.normalize_embeddings(randn(batch, n, channels)).detach().requires_grad_()
    if kernel == "exchange":
        aux = conventions.normalize_embeddings(randn(batch, n, channels)).detach().requires_grad_()
        return {"src": src, "aux": aux, "probe": randn(batch, n, channels)}
    tgt = conventions.normalize_embeddings(randn(batch, n, channels)).detach().requires_grad_()
    if device == "meta":
        return {"src": src, "tgt": tgt, "src_xy": torch.empty(batch, n, 2, device="meta"),
                "tgt_xy": torch.empty(n, 2, device="meta")}
    coords = torch.arange(side, dtype=torch.float32)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    tgt_xy = torch.stack((xx, yy), -1).reshape(n, 2)
    src_xy = (tgt_xy[None] + torch.randn(batch, n, 2, generator=generator)).to(device)
    return {"src": src, "tgt": tgt, "src_xy": src_xy, "tgt_xy": tgt_xy.to(device)}


def grad_inputs(inputs: dict) -> list:
    return [t for t in inputs.values() if isinstance(t, torch.Tensor) and t.requires_grad]


# ----------------------------------------------------------------------------------------------- providers
def _keops():
    try:
        from pykeops.torch import LazyTensor
    except ImportError as error:
        raise Unavailable(f"pykeops is not installed ({error})") from error
    return LazyTensor


def _keops_exchange(src, aux):
    LazyTensor = _keops()
    logits = LazyTensor(src[:, :, None, :].contiguous()) | LazyTensor(aux[:, None, :, :].contiguous())
    return logits.sumsoftmaxweight(LazyTensor(aux[:, None, :, :].contiguous()), axis=2)


def _keops_warp_rows(src, tgt, src_xy, tgt_xy, pow):
    LazyTensor = _keops()
    if tgt_xy.dim() == 2:
        tgt_xy = tgt_xy.expand(src.shape[0], -1, -1)
    logits = LazyTensor(src[:, :, None, :].contiguous()) | LazyTensor(tgt[:, None, :, :].contiguous())
    squared = ((LazyTensor(src_xy[:, :, None, :].contiguous()) - LazyTensor(tgt_xy[:, None, :, :].contiguous())) ** 2
               ).sum(-1)
    distance = squared.sqrt().sqrt() if pow == 0.5 else squared.sqrt() ** pow
    return logits.sumsoftmaxweight(distance, axis=2).squeeze(-1)


def _sdpa_exchange(src, aux):
    return F.scaled_dot_product_attention(src, aux, aux, scale=1.0)


def _original_exchange(src, aux):
    """Per pair: softmax, then the C x N x M product summed over targets, as the original DVE loss does."""
    rebuilt = []
    for b in range(src.shape[0]):
        probabilities = torch.softmax(src[b] @ aux[b].T, dim=-1)  # (N, M)
        rebuilt.append((probabilities[None] * aux[b].T[:, None, :]).sum(-1).T)
    return torch.stack(rebuilt)


def _original_warp_rows(src, tgt, src_xy, tgt_xy, pow):
    rows = []
    for b in range(src.shape[0]):
        probabilities = torch.softmax(src[b] @ tgt[b].T, dim=-1)
        with torch.no_grad():
            diff = src_xy[b][:, None, :] - tgt_xy[None, :, :]
            distance = (diff * diff).sum(-1).sqrt().pow(pow)
        rows.append((distance * probabilities).sum(-1))
    return torch.stack(rows)


def _fused_backend(device) -> str:
    backend = "triton" if torch.device(device).type == "cuda" else "cpu"
    try:
        functional.resolve_backend(backend, torch.device(device))
    except functional.BackendUnavailableError as error:
        raise Unavailable(str(error)) from error
    return backend


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _dense_warp_rows(src, tgt, src_xy, tgt_xy, pow):
    return reference.warp_loss_rows(src, tgt, src_xy, tgt_xy, pow, 1.0)


def _dve_with(exchange_fn, warp_rows_fn, feats, grid, pow=0.5):
    src, tgt, src_xy, tgt_xy = conventions.prepare_pairs(feats, grid, True)
    rebuilt = exchange_fn(src, conventions.gather_auxiliary(src, 1))
    return warp_rows_fn(rebuilt, tgt, src_xy, tgt_xy, pow).mean()


def _dense_dve(feats, grid):
    return reference.dense_correlation_loss_dve(feats, {"grid": grid})


def _dense_exchange(src, aux, probe):
    return (reference.exchange(src, aux) * probe).sum()


def _dense_warp(src, tgt, src_xy, tgt_xy):
    return reference.warp_loss(src, tgt, src_xy, tgt_xy)


def loss_function(kernel: str, provider: str, device: str):
    """A callable ``f(**inputs) -> scalar`` for this kernel and provider, or :class:`Unavailable`."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider: expected one of {PROVIDERS}, got {provider!r}")
    if provider == "keops":
        _keops()
    if kernel == "exchange":
        exchange_fn = {
            "original": _original_exchange,
            "sdpa": _sdpa_exchange,
            "keops": _keops_exchange,
        }.get(provider)
        if provider == "dense":
            return _dense_exchange
        if provider == "dense-compiled":
            return _compiled(_dense_exchange)
        if provider == "dve_kernels":
            backend = _fused_backend(device)
            return lambda src, aux, probe: (dve_kernels.exchange(src, aux, backend=backend) * probe).sum()
        return lambda src, aux, probe: (exchange_fn(src, aux) * probe).sum()
    if kernel == "warp_loss":
        if provider == "sdpa":
            raise Unavailable("scaled_dot_product_attention has no distance-weighted form of the warp loss")
        if provider == "dense":
            return _dense_warp
        if provider == "dense-compiled":
            return _compiled(_dense_warp)
        if provider == "dve_kernels":
            backend = _fused_backend(device)
            return lambda src, tgt, src_xy, tgt_xy: dve_kernels.warp_loss(src, tgt, src_xy, tgt_xy, backend=backend)
        rows_fn = _original_warp_rows if provider == "original" else _keops_warp_rows
        return lambda src, tgt, src_xy, tgt_xy: rows_fn(src, tgt, src_xy, tgt_xy, 0.5).mean()
    if kernel == "dve":
        if provider == "original":
            return lambda feats, grid: original.dense_correlation_loss_dve(feats, {"grid": grid})
        if provider == "dense":
            return _dense_dve
        if provider == "dense-compiled":
            return _compiled(_dense_dve)
        if provider == "sdpa":
            return lambda feats, grid: _dve_with(_sdpa_exchange, _dense_warp_rows, feats, grid)
        if provider == "keops":
            return lambda feats, grid: _dve_with(_keops_exchange, _keops_warp_rows, feats, grid)
        backend = _fused_backend(device)
        return lambda feats, grid: dve_kernels.dense_correlation_loss_dve(feats, {"grid": grid}, backend=backend)
    raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")


# ----------------------------------------------------------------------------------------------- memory model
def dense_bytes_estimate(kernel: str, provider: str, side: int, channels: int, batch: int, itemsize: int) -> float:
    """What a provider that cannot run on the ``meta`` device holds at least: the fused ones (``keops``,
    ``dve_kernels``, ``sdpa``'s flash kernel) keep ``O(B·N·C)``; anything else keeps ``B`` matrices ``N x M``."""
    n = side * side
    if provider in ("dve_kernels", "keops", "sdpa"):
        return 8.0 * batch * n * channels * itemsize
    return float(batch) * n * n * itemsize


def sizeof_fmt(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"


def pairs_per_call(kernel: str, side: int, batch: int) -> float:
    """(u, v) pairs one call touches: ``B·N·M`` per softmax pass (the DVE loss has two)."""
    n = side * side
    return batch * n * n * (2 if kernel == "dve" else 1)

