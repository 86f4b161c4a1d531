"""SmallNet and Hourglass: output shapes, strides, the paper's layer sizes."""

import pytest
import torch
import torch.nn as nn

from dve_kernels.train.models import Hourglass, SmallNet, build_model


@pytest.mark.parametrize("size, channels", [(70, 64), (40, 3), (22, 1)])
def test_smallnet_shapes_and_stride(size, channels):
    net = SmallNet(channels).eval()
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, channels, size // 2, size // 2)
    assert SmallNet.stride == 2 and size // out.shape[-1] == 2


def test_smallnet_layers_follow_appendix_d():
    net = SmallNet(16)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 48, 64, 80, 256, 16]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 2, 1]
    assert [c.kernel_size[0] for c in convs] == [5, 5, 5, 3, 3, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5  # none after the last conv
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == 1
    assert all(float(c.bias.detach().abs().max()) == 0 for c in convs)


def test_smallnet_is_translation_equivariant_in_the_interior():
    # Shifting the input by 2 pixels shifts the embedding by 1 (stride 2) away from the borders.
    # The receptive field reaches about 13 embedding pixels, so compare well inside 60x60 maps.
    net = SmallNet(8).eval()
    x = torch.randn(1, 3, 122, 122)
    with torch.no_grad():
        a = net(x[..., :120, :120])
        b = net(x[..., 2:, 2:])
    assert torch.allclose(b[..., 16:44, 16:44], a[..., 17:45, 17:45], atol=1e-4)
    assert not torch.allclose(b[..., 16:44, 16:44], a[..., 16:44, 16:44], atol=1e-2)


@pytest.mark.parametrize("size, channels", [(96, 64), (64, 5)])
def test_hourglass_shapes_and_stride(size, channels):
    net = Hourglass(channels, planes=16, stem_planes=8).eval()
    out = net(torch.randn(1, 3, size, size))
    assert out.shape == (1, channels, size // 2, size // 2)


def test_hourglass_full_size_and_bad_input():
    net = Hourglass(64).eval()
    assert net.depth == 4
    assert sum(p.numel() for p in net.parameters()) > 1_000_000
    with torch.no_grad():
        assert net(torch.randn(1, 3, 96, 96)).shape == (1, 64, 48, 48)
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 3, 70, 70))


def test_build_model():
    from dve_kernels.train.config import TrainConfig

    net = build_model(TrainConfig(model="smallnet", embedding_dim=3, model_width=0.5))
    assert isinstance(net, SmallNet) and net.head.out_channels == 3 and net.head.in_channels == 128
    net = build_model(TrainConfig(model="hourglass", embedding_dim=5))
    assert isinstance(net, Hourglass) and net.embedding_dim == 5
    with pytest.raises(ValueError, match="model must be one of"):
        build_model(TrainConfig(model="resnet"))
    with pytest.raises(ValueError, match="embedding_dim"):
        SmallNet(0)


def test_highres_preset_gives_128x128_embeddings():
    from dve_kernels.train.config import PRESETS

    from dve_kernels.train.config import TrainConfig

    preset = PRESETS["highres"]
    net = build_model(TrainConfig.from_dict(preset)).to("meta")
    size = preset["imwidth"] - 2 * preset["crop"]
    assert net(torch.empty(2, 3, size, size, device="meta")).shape == (2, 64, 128, 128)


def test_memory_report_takes_every_training_flag_and_the_dense_step_holds_n_by_m(capsys):
    import json

    from dve_kernels.train.memory_report import main

    assert main(["--preset", "demo", "--batch-size", "2", "-C", "8", "--imwidth", "40", "--crop", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["embedding"] == "16x16x8" and report["pairs_per_step"] == 2 and report["input"] == 32
    dense, fused = report["dense"], report["fused"]
    assert dense["peak_bytes"] > fused["peak_bytes"] > 0, (dense, fused)
    assert "(2, 256, 256, 2)" in dense["largest_tensor"]  # B x N x M coordinate differences: the memory wall
