"""Models. Every model is ``features`` (images -> (B, D)) followed by ``classifier`` ((B, D) -> logits).

Keeping the two apart is what decoupled re-training, DLSA and feature extraction need.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    """Backbone + linear head, with ``features`` and ``classifier`` exposed separately."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, head: str = "linear"):
        super().__init__()
        self.features = features
        self.feature_dim = feature_dim
        self.classifier = make_head(head, feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW: logits = <x/|x|, w_c/|w_c|> (the loss applies the scale s)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)


def make_head(kind: str, in_features: int, num_classes: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "normed":
        return NormedLinear(in_features, num_classes)
    raise ValueError(f"unknown classifier head {kind!r}; choose 'linear' or 'normed'")


# ------------------------------------------------------------------------------------------------
# ResNet-32 for CIFAR (He et al. 2016, Sec. 4.2): 3 stages of 5 basic blocks, 16/32/64 channels,
# option-A shortcuts (parameter-free: stride-2 subsampling and zero channel padding). ~0.46 M parameters.
# ------------------------------------------------------------------------------------------------

class _OptionAShortcut(nn.Module):
    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class _BasicBlockA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _OptionAShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNetFeatures(nn.Module):
    def __init__(self, blocks_per_stage: int = 5, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(_BasicBlockA(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def resnet32(num_classes: int, in_channels: int = 3, head: str = "linear") -> Classifier:
    model = Classifier(CifarResNetFeatures(5, in_channels), 64, num_classes, head)
    if isinstance(model.classifier, nn.Linear):
        nn.init.kaiming_normal_(model.classifier.weight)
    return model


# ------------------------------------------------------------------------------------------------
# Small CNN for 8x8 digits and 28x28 MNIST
# ------------------------------------------------------------------------------------------------

class SmallCNNFeatures(nn.Module):
    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def small_cnn(num_classes: int, in_channels: int = 1, head: str = "linear", width: int = 32) -> Classifier:
    features = SmallCNNFeatures(in_channels, width)
    return Classifier(features, features.out_dim, num_classes, head)


# ------------------------------------------------------------------------------------------------
# torchvision ResNets for ImageNet-scale data, and ResNet-10 (one basic block per stage), the
# ImageNet-LT backbone of Kang et al. 2020, CDB and Difficulty-Net.
# ------------------------------------------------------------------------------------------------

def _torchvision_resnet(name: str, num_classes: int, in_channels: int = 3, head: str = "linear") -> Classifier:
    from torchvision.models import resnet
    from torchvision.models.resnet import BasicBlock

    if name == "resnet10":
        net = resnet.ResNet(BasicBlock, [1, 1, 1, 1])
    else:
        net = getattr(resnet, name)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return Classifier(net, dim, num_classes, head)


MODELS: dict[str, Callable[..., Classifier]] = {
    "resnet32": resnet32,
    "small_cnn": small_cnn,
    **{name: (lambda name: lambda num_classes, in_channels=3, head="linear":
              _torchvision_resnet(name, num_classes, in_channels, head))(name)
       for name in ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
}


def build_model(name: str, num_classes: int, in_channels: int = 3, head: str = "linear") -> Classifier:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes, in_channels=in_channels, head=head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prior_bias_init_(linear: nn.Linear, prior: float) -> None:
    """Set the bias to −log((1−π)/π) (the focal-loss prior initialisation used by CDB's CIFAR code)."""
    nn.init.constant_(linear.bias, -math.log((1 - prior) / prior))
