import timm
import torch
from torch import nn

from models.encoders import load_encoder
from models.fusion import fold_batchnorm


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Random, non-trivial batch-norm statistics (fresh models have mean 0, var 1)."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.weight.data.normal_(1, 0.2, generator=generator)
            m.bias.data.normal_(0, 0.2, generator=generator)
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_folding_keeps_the_outputs_of_timm_cnns():
    x = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    for arch, pairs in (("tf_efficientnet_lite0", 49), ("resnet18", 20)):
        model = _with_running_stats(timm.create_model(arch, num_classes=0))
        folded, count = fold_batchnorm(model, x[:2])
        assert count == pairs and _norms(folded) == 0
        assert _norms(model) == pairs  # the original is left as it was
        with torch.inference_mode():
            expected, got = model(x), folded(x)
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


class _ActivationBetween(nn.Module):
    """conv and norm are neighbours as children, but a ReLU runs between them in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


def test_a_model_that_folding_would_change_is_returned_untouched():
    model = _with_running_stats(_ActivationBetween())
    folded, count = fold_batchnorm(model, torch.randn(2, 3, 16, 16))
    assert count == 0 and folded is model and _norms(model) == 1


def test_built_in_encoders_run_without_batch_norms():
    encoder = load_encoder("efficientnet_lite0", device="cpu")
    assert _norms(encoder.module) == 0
