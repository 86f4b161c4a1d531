"""Embedding networks of the DVE paper (appendix D): SmallNet and a single-stack Hourglass.

Both map ``(B, 3, H, W)`` images to ``(B, C, H / 2, W / 2)`` dense embeddings (``stride = 2``), for any ``C``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SmallNet", "Hourglass", "build_model", "normalize_images", "embed", "match_keypoints"]

#: The original repository's image normalisation (CelebA statistics).
IMAGE_MEAN = (0.5084, 0.4224, 0.3769)
IMAGE_STD = (0.2599, 0.2371, 0.2323)


def _conv_bn_act(in_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int = 1):
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
                         nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.2))


class SmallNet(nn.Module):
    """The network of Thewlis et al. (2017), DVE appendix D: convolutions with 20, 48, 64, 80, 256 and then ``C``
    filters (times ``width``), dilated 1, 1, 2, 4, 2, 1 as in the original code; every one but the last followed by
    batch norm and a leaky ReLU (slope 0.2); a 2x2 max pool after the first. The output is ``H / 2 x W / 2``.

    ``dilation`` multiplies every dilation (and padding): the same weights and cost per pixel, a receptive field of
    54 input pixels at 1 and 106 at 2 (for twice the input resolution, the same fraction of the image)."""

    stride = 2

    def __init__(self, embedding_dim: int = 64, width: float = 1.0, dilation: int = 1):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        c = [max(1, int(round(n * width))) for n in (20, 48, 64, 80, 256)]
        d = dilation
        self.embedding_dim = embedding_dim
        self.features = nn.Sequential(
            _conv_bn_act(3, c[0], 5, padding=2 * d, dilation=d),
            nn.MaxPool2d(kernel_size=2, stride=2),
            _conv_bn_act(c[0], c[1], 5, padding=2 * d, dilation=d),
            _conv_bn_act(c[1], c[2], 5, padding=4 * d, dilation=2 * d),
            _conv_bn_act(c[2], c[3], 3, padding=4 * d, dilation=4 * d),
            _conv_bn_act(c[3], c[4], 3, padding=2 * d, dilation=2 * d),
        )
        self.head = nn.Conv2d(c[4], embedding_dim, kernel_size=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H // 2, W // 2)``."""
        return self.head(self.features(x))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.3)  # the original's hourglass: a high batch-norm momentum


class _PreactBottleneck(nn.Module):
    """Pre-activation residual bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (``2 · planes`` outputs)."""

    expansion = 2

    def __init__(self, in_channels: int, planes: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.body = nn.Sequential(
            _bn(in_channels), nn.ReLU(), nn.Conv2d(in_channels, planes, 1),
            _bn(planes), nn.ReLU(), nn.Conv2d(planes, planes, 3, padding=1),
            _bn(planes), nn.ReLU(), nn.Conv2d(planes, out_channels, 1),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x):
        return self.body(x) + self.skip(x)


def _residuals(in_channels: int, planes: int, count: int) -> nn.Sequential:
    layers = [_PreactBottleneck(in_channels, planes)]
    layers += [_PreactBottleneck(planes * 2, planes) for _ in range(count - 1)]
    return nn.Sequential(*layers)


class _HourglassLevel(nn.Module):
    """One recursion level: a skip branch at this resolution and a pooled branch that recurses."""

    def __init__(self, depth: int, channels: int, num_blocks: int):
        super().__init__()
        planes = channels // 2
        self.skip = _residuals(channels, planes, num_blocks)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.down = _residuals(channels, planes, num_blocks)
        self.inner = (_HourglassLevel(depth - 1, channels, num_blocks) if depth > 1
                      else _residuals(channels, planes, num_blocks))
        self.up_res = _residuals(channels, planes, num_blocks)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(self, x):
        return self.skip(x) + self.upsample(self.up_res(self.inner(self.down(self.pool(x)))))


class Hourglass(nn.Module):
    """A single-stack hourglass (Newell et al. 2016) with pre-activation residuals, DVE appendix D: a 7x7 stride-2
    stem, three residual modules, one hourglass of ``depth`` pooling levels, a residual head and a 1x1 convolution
    to ``C`` channels. Output ``H / 2 x W / 2``; ``H / 2`` must be divisible by ``2^depth``."""

    stride = 2

    def __init__(self, embedding_dim: int = 64, planes: int = 128, depth: int = 4, num_blocks: int = 1,
                 stem_planes: int = 64):
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.embedding_dim = embedding_dim
        self.depth = depth
        channels = planes * 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_planes, 7, stride=2, padding=3), _bn(stem_planes), nn.ReLU(),
            _residuals(stem_planes, stem_planes, 1),
            _residuals(stem_planes * 2, planes, 1),
            _residuals(channels, planes, 1),
        )
        self.hourglass = _HourglassLevel(depth, channels, num_blocks)
        self.head = nn.Sequential(
            _residuals(channels, planes, num_blocks),
            nn.Conv2d(channels, channels, 1), _bn(channels), nn.ReLU(),
            nn.Conv2d(channels, embedding_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, C, H // 2, W // 2)``."""
        if x.dim() != 4:
            raise ValueError(f"expected (B, 3, H, W) images, got {tuple(x.shape)}")
        multiple = 2 * 2 ** self.depth
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"Hourglass(depth={self.depth}) needs input sizes divisible by {multiple}, "
                             f"got {tuple(x.shape[-2:])}")
        return self.head(self.hourglass(self.stem(x)))


def build_model(config) -> nn.Module:
    """The network of a :class:`~dve_kernels.train.config.TrainConfig` (``model``, ``embedding_dim``,
    ``model_width`` and ``model_dilation`` for SmallNet): the one place that builds one."""
    if config.model == "smallnet":
        return SmallNet(config.embedding_dim, width=config.model_width, dilation=config.model_dilation)
    if config.model == "hourglass":
        return Hourglass(config.embedding_dim)
    raise ValueError(f"model must be one of ['hourglass', 'smallnet'], got {config.model!r}")


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` RGB ``(B, 3, H, W)`` to the original's normalisation (CelebA mean and std)."""
    mean = images.new_tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def embed(model: nn.Module, images: torch.Tensor, device="cpu", batch_size: int = 32) -> torch.Tensor:
    """Embeddings ``(N, C, h, w)`` (float32, CPU) of ``[0, 1]`` images ``(N, 3, H, W)``, without gradients."""
    outs = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = normalize_images(images[start:start + batch_size].to(device))
            outs.append(model(chunk).float().cpu())
    return torch.cat(outs)


def match_keypoints(source: torch.Tensor, target: torch.Tensor, keypoints: torch.Tensor, stride: float):
    """Nearest-embedding matches: ``source``, ``target`` ``(C, H, W)`` embeddings, ``keypoints`` ``(K, 2)`` pixel
    ``(x, y)`` in the source image, ``stride`` input pixels per embedding pixel. Returns ``(K, 2)`` pixel ``(x, y)``
    in the target: the pixel ``(j·stride, i·stride)`` whose embedding has the largest inner product with the
    source embedding at the rounded keypoint."""
    channels, height, width = source.shape
    cols = torch.clamp(torch.round(keypoints[:, 0] / stride).long(), 0, width - 1)
    rows = torch.clamp(torch.round(keypoints[:, 1] / stride).long(), 0, height - 1)
    query = source[:, rows, cols].T  # (K, C)
    scores = query @ target.reshape(channels, height * width)
    best = scores.argmax(dim=1)
    return torch.stack(((best % width).float() * stride, (best // width).float() * stride), dim=1)
