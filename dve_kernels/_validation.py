"""Input validation, in one place, before any backend runs (docs/contract.md section 4).

Every error names the argument, what was expected and what was given.
Shape errors are ``ValueError``; wrong types and dtypes are ``TypeError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

BACKENDS = ("auto", "triton", "cpu", "reference")
REDUCTIONS = ("mean", "sum", "none")
#: The most channels the Triton kernels are compiled and checked for (dve_kernels.ops._launch.CHANNEL_PADS).
TRITON_MAX_CHANNELS = 256


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t, ndim: int, layout: str) -> torch.Tensor:
    """A non-empty floating-point tensor of ``ndim`` dimensions (``layout`` names them, e.g. "(B, N, C)")."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(
            f"{name}: expected a floating-point tensor (float32, float64, float16 or bfloat16), "
            f"got dtype {t.dtype}"
        )
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got {t.dim()} ({_describe(t)})")
    if t.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty tensor {layout}, got {_describe(t)}")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listing}")


def check_same_dtype(**tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{name} is {dtype}" for name, dtype in dtypes.items())
        raise TypeError(f"expected embeddings of one dtype, got {listing}")


def check_dim(name: str, t: torch.Tensor, dim: int, expected: int, what: str, layout: str) -> None:
    if t.shape[dim] != expected:
        raise ValueError(f"{name}: expected {what} = {expected} in {layout}, got shape {tuple(t.shape)}")


def check_real(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a number > 0, got {value}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_channels(name: str, t: torch.Tensor, backend: str, channel_dim: int = -1) -> None:
    """C <= 256 where the Triton kernels would run (every channel pad they can pick is compiled and checked)."""
    triton = backend == "triton" or (backend == "auto" and t.device.type == "cuda")
    if triton and t.shape[channel_dim] > TRITON_MAX_CHANNELS:
        raise ValueError(f"{name}: the Triton kernels support C <= {TRITON_MAX_CHANNELS} channels, got C = "
                         f"{t.shape[channel_dim]} (shape {tuple(t.shape)}); use backend='cpu' (CPU tensors) or "
                         f"'reference'")


def check_exchange(query, aux, scale, backend) -> float:
    check_tensor("query", query, 3, "(B, N, C)")
    check_tensor("aux", aux, 3, "(B, M, C)")
    check_same_device(query=query, aux=aux)
    check_same_dtype(query=query, aux=aux)
    check_dim("aux", aux, 0, query.shape[0], "batch size B (from query)", "(B, M, C)")
    check_dim("aux", aux, 2, query.shape[2], "channels C (from query)", "(B, M, C)")
    check_choice("backend", backend, BACKENDS)
    check_channels("query", query, backend)
    return check_real("scale", scale)


def check_warp_loss(src, tgt, src_xy, tgt_xy, pow, scale, reduction, backend):
    check_tensor("src", src, 3, "(B, N, C)")
    check_tensor("tgt", tgt, 3, "(B, M, C)")
    check_tensor("src_xy", src_xy, 3, "(B, N, 2)")
    if not isinstance(tgt_xy, torch.Tensor) or tgt_xy.dim() != 3:
        check_tensor("tgt_xy", tgt_xy, 2, "(M, 2) or (B, M, 2)")
    else:
        check_tensor("tgt_xy", tgt_xy, 3, "(M, 2) or (B, M, 2)")
    check_same_device(src=src, tgt=tgt, src_xy=src_xy, tgt_xy=tgt_xy)
    check_same_dtype(src=src, tgt=tgt)
    batch, n, channels = src.shape
    m = tgt.shape[1]
    check_dim("tgt", tgt, 0, batch, "batch size B (from src)", "(B, M, C)")
    check_dim("tgt", tgt, 2, channels, "channels C (from src)", "(B, M, C)")
    check_dim("src_xy", src_xy, 0, batch, "batch size B (from src)", "(B, N, 2)")
    check_dim("src_xy", src_xy, 1, n, "source pixels N (from src)", "(B, N, 2)")
    check_dim("src_xy", src_xy, 2, 2, "2 coordinates (x, y)", "(B, N, 2)")
    layout = "(M, 2) or (B, M, 2)"
    if tgt_xy.dim() == 3:
        check_dim("tgt_xy", tgt_xy, 0, batch, "batch size B (from src)", layout)
    check_dim("tgt_xy", tgt_xy, -2, m, "target pixels M (from tgt)", layout)
    check_dim("tgt_xy", tgt_xy, -1, 2, "2 coordinates (x, y)", layout)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    check_channels("src", src, backend)
    return check_real("pow", pow, positive=True), check_real("scale", scale)


def check_feats_and_grid(feats, grid, *, grid_name: str = "meta['grid']") -> torch.Tensor:
    """The original's ``feats`` (tensor or sequence whose first item is one) and its warp grid.

    Returns the feature tensor.
    """
    if isinstance(feats, (tuple, list)):
        if len(feats) == 0:
            raise ValueError("feats: expected a tensor (2B, C, H, W) or a non-empty tuple/list whose "
                             "first element is one, got an empty sequence")
        feats = feats[0]
    check_tensor("feats", feats, 4, "(2B, C, H, W)")
    if feats.shape[0] % 2:
        raise ValueError(f"feats: expected an even first dimension 2B (pairs interleaved as x, x'), "
                         f"got shape {tuple(feats.shape)}")
    check_tensor(grid_name, grid, 4, "(B, H_in, W_in, 2)")
    batch = feats.shape[0] // 2
    height, width = feats.shape[-2:]
    check_dim(grid_name, grid, 0, batch, "batch size B = feats.shape[0] // 2", "(B, H_in, W_in, 2)")
    check_dim(grid_name, grid, 3, 2, "2 coordinates (x, y)", "(B, H_in, W_in, 2)")
    height_in, width_in = grid.shape[1:3]

    def fits(h, w):
        stride = height_in // h
        return stride >= 1 and len(range(0, height_in, stride)) == h and len(range(0, width_in, stride)) == w

    stride = height_in // height
    if not fits(height, width):
        if fits(feats.shape[1], feats.shape[2]):  # the grid fits dims 1 and 2: (2B, H, W, C) given for (2B, C, H, W)
            raise ValueError(
                f"feats: expected the layout (2B, C, H, W), got shape {tuple(feats.shape)}, which looks like "
                f"(2B, H, W, C) = channels last, as the grid {tuple(grid.shape)} fits H x W = "
                f"{feats.shape[1]} x {feats.shape[2]}; pass feats.permute(0, 3, 1, 2) (a channels_last memory "
                f"format of a (2B, C, H, W) tensor is fine)")
        raise ValueError(
            f"{grid_name}: a grid of shape {tuple(grid.shape)} does not fit feature maps of size {height}x{width}: "
            f"with stride = H_in // H = {stride} the grid must sub-sample to exactly H x W "
            f"(len(range(0, H_in, stride)) == H and len(range(0, W_in, stride)) == W)"
        )
    return feats


def check_meta(meta) -> torch.Tensor:
    if not isinstance(meta, Mapping) or "grid" not in meta:
        raise TypeError(f"meta: expected a mapping with key 'grid' (B, H_in, W_in, 2), got {type(meta).__name__}"
                        + (f" with keys {sorted(meta)}" if isinstance(meta, Mapping) else ""))
    return meta["grid"]


def check_num_aux(num_aux, batch: int | None = None) -> int:
    """An int ``num_aux >= 1``, and at most ``max(1, B - 1)`` when the batch size ``B`` is known."""
    if isinstance(num_aux, bool) or not isinstance(num_aux, numbers.Integral):
        raise TypeError(f"num_aux: expected an int, got {type(num_aux).__name__} ({num_aux!r})")
    if batch is None:
        if num_aux < 1:
            raise ValueError(f"num_aux: expected an int >= 1 auxiliary images, got {num_aux}")
        return int(num_aux)
    limit = max(1, batch - 1)
    if not 1 <= num_aux <= limit:
        raise ValueError(f"num_aux: expected 1 <= num_aux <= max(1, B - 1) = {limit} auxiliary images "
                         f"for B = {batch} pairs, got {num_aux}")
    return int(num_aux)
