"""ltlib.models: CIFAR ResNet-32, the small CNN, torchvision ResNets, heads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ltlib.models import (
    MODELS,
    NormedLinear,
    build_model,
    count_parameters,
    make_head,
    prior_bias_init_,
    resnet32,
    small_cnn,
)


def resnet32_parameters_by_hand(num_classes: int, in_channels: int = 3) -> int:
    """He et al. 2016, Sec. 4.2: 3x3 convs without bias, BN (2 per channel), option-A shortcuts."""
    def conv(cin, cout):
        return 9 * cin * cout

    def bn(c):
        return 2 * c
    total = conv(in_channels, 16) + bn(16)
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(5):
            total += conv(in_planes, planes) + bn(planes) + conv(planes, planes) + bn(planes)
            in_planes = planes
    return total + 64 * num_classes + num_classes


def test_resnet32_parameter_count():
    model = resnet32(10)
    n = count_parameters(model)
    assert 450_000 <= n <= 480_000
    assert n == resnet32_parameters_by_hand(10)
    assert n == sum(p.numel() for p in model.parameters())
    assert count_parameters(resnet32(100, in_channels=1)) == resnet32_parameters_by_hand(100, in_channels=1)


def test_resnet32_features_and_classifier_are_separate():
    torch.manual_seed(0)
    model = resnet32(10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
        assert features.shape == (2, 64)
        assert logits.shape == (2, 10)
        assert isinstance(model.classifier, nn.Linear)
        assert model.classifier.in_features == 64 and model.feature_dim == 64
        torch.testing.assert_close(logits, model.classifier(features))
    # the classifier's parameters are not part of the feature extractor
    feature_params = {id(p) for p in model.features.parameters()}
    assert all(id(p) not in feature_params for p in model.classifier.parameters())
    # option-A shortcuts carry no parameters: 31 convs (1 + 3 x 5 x 2) and no 1x1 projection
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 31 and all(m.kernel_size == (3, 3) for m in convs)


def test_resnet32_normed_head_gives_cosines():
    torch.manual_seed(0)
    model = resnet32(5, head="normed").eval()
    assert isinstance(model.classifier, NormedLinear)
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 5)
    assert float(logits.abs().max()) <= 1.0 + 1e-5


def test_normed_linear_is_cosine_similarity():
    torch.manual_seed(0)
    head = NormedLinear(4, 3)
    x = torch.randn(5, 4)
    expected = torch.stack([torch.stack([torch.nn.functional.cosine_similarity(x[i], head.weight[:, c], dim=0)
                                         for c in range(3)]) for i in range(5)])
    torch.testing.assert_close(head(x), expected)


def test_small_cnn_on_8x8_digits():
    torch.manual_seed(0)
    model = small_cnn(10).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert model.features(x).shape == (2, 64)
        assert model(x).shape == (2, 10)
    assert build_model("small_cnn", 3, in_channels=1)(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def test_torchvision_import():
    import torchvision
    from torchvision.models import resnet

    assert hasattr(torchvision, "__version__")
    assert hasattr(resnet, "resnet18")


@pytest.mark.parametrize("name, blocks", [("resnet10", 1), ("resnet18", 2)])
def test_torchvision_resnets_forward(name, blocks):
    torch.manual_seed(0)
    model = build_model(name, 5).eval()
    assert model.feature_dim == 512
    assert [len(getattr(model.features, f"layer{i}")) for i in range(1, 5)] == [blocks] * 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert features.shape == (2, 512)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_torchvision_resnet_single_channel():
    model = build_model("resnet10", 4, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)


def test_unknown_model_and_head():
    with pytest.raises(ValueError, match="unknown model") as info:
        build_model("vgg16", 10)
    assert "resnet32" in str(info.value)
    with pytest.raises(ValueError, match="head"):
        make_head("mlp", 8, 2)
    with pytest.raises(ValueError, match="head"):
        build_model("resnet32", 10, head="cosine")


def test_model_registry_names():
    assert {"resnet32", "small_cnn", "resnet10", "resnet18", "resnet50"} <= set(MODELS)


def test_prior_bias_init():
    linear = nn.Linear(3, 4)
    prior_bias_init_(linear, 0.01)
    # sigmoid(bias) must equal the prior
    torch.testing.assert_close(torch.sigmoid(linear.bias), torch.full((4,), 0.01))
