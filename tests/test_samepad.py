"""models.samepad: TensorFlow 'SAME' convolutions made static give the same outputs."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

from models.encoders import load_encoder
from models.samepad import StaticSameConv2d, same_padding, static_same_padding


def _same_convs(module: nn.Module) -> int:
    return sum(isinstance(m, Conv2dSame) for m in module.modules())


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 2, (0, 1)),
        (112, 5, 2, (1, 2)),
        (225, 3, 2, (1, 1)),
        (14, 3, 1, (1, 1)),
        (7, 1, 1, (0, 0)),
        (5, 5, 2, (2, 2)),
    ],
)
def test_same_padding_matches_tensorflow(size, kernel, stride, expected) -> None:
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)


@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(224, 224), (57, 40), (1, 9)])
def test_static_layer_equals_conv2d_same(kernel: int, stride: int, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(6, 8, kernel, stride=stride, groups=2, bias=True).eval()
    static = StaticSameConv2d(conv, hw).eval()
    x = torch.randn(3, 6, *hw)
    with torch.inference_mode():
        expected = conv(x)
        assert torch.allclose(static(x), expected, atol=1e-5)
        other = torch.randn(2, 6, hw[0] + 3, hw[1] + 1)  # another size: the padding path
        assert torch.allclose(static(other), conv(other), atol=1e-5)
        cl = x.contiguous(memory_format=torch.channels_last)
        assert torch.allclose(static(cl), expected, atol=1e-5)


def test_tf_efficientnet_is_rewritten_and_unchanged() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    probe = torch.randn(2, 3, 224, 224)
    static, replaced = static_same_padding(model, probe)
    assert replaced == 5 == _same_convs(model) and _same_convs(static) == 0
    x = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(static(x), expected, atol=1e-4 * float(expected.abs().max()))
        odd = torch.randn(1, 3, 193, 201)  # not the probe's size: still the same outputs
        assert torch.allclose(static(odd), model(odd), atol=1e-4)


def test_models_without_same_convs_or_with_dilation_are_left_alone() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    assert static_same_padding(plain, torch.randn(1, 3, 16, 16)) == (plain, 0)
    dilated = nn.Sequential(Conv2dSame(3, 4, 3, stride=1, dilation=2)).eval()
    assert static_same_padding(dilated, torch.randn(1, 3, 16, 16))[1] == 0


def test_a_rewrite_that_disagrees_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(Conv2dSame(3, 4, 3, stride=2)).eval()

    def wrong(self: StaticSameConv2d, x: torch.Tensor) -> torch.Tensor:
        return nn.Conv2d.forward(self, x) + 1.0

    monkeypatch.setattr(StaticSameConv2d, "forward", wrong)
    assert static_same_padding(model, torch.randn(1, 3, 32, 32)) == (model, 0)


def test_the_default_encoder_has_no_dynamic_padding_left() -> None:
    encoder = load_encoder("efficientnet_lite0", weights="random")
    assert _same_convs(encoder.module) == 0
    assert sum(isinstance(m, StaticSameConv2d) for m in encoder.module.modules()) == 5
