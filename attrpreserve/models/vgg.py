"""VGG teachers and width-reduced students with named attribution layers.

Module names follow torchvision's ``vgg16_bn`` (``features.N``, ``classifier``), so an ImageNet
state-dict file for ``vgg16_bn`` loads into ``vgg16(weights=PATH)`` with the head replaced.
ReLUs are built with ``inplace=False`` so a captured activation is never overwritten, and so
captum/zennit hooks see distinct tensors.

Layer names. Every model names its layers after VGG16's scheme, counted in its own plan:
``conv{block}_{i}`` is the ReLU after the ``i``-th conv of block ``block``, ``pool{block}`` the
max-pool ending the block. Two **aliases** mean a *role*, not a position, on every depth:

- ``pool5``: the last max-pool (VGG16: ``pool5`` itself; ``vgg_small``: ``pool3``), the
  paper's matching layer and the default attribution layer;
- ``conv5_3``: the ReLU after the last conv (VGG16: ``conv5_3`` itself; ``vgg_small``:
  ``conv3_2``), Grad-CAM's usual layer.

So ``vgg_small`` has no fifth block, yet ``"pool5"``/``"conv5_3"`` work on it and name the same
role as on the teacher; a config or a paper table that says ``pool5`` means "the last pool".
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from attrpreserve.models.weights import load_weights, resolve_weights, weights_source

# Layer plans: an int is a 3x3 conv (+BN) + ReLU with that many channels, "M" a 2x2 max-pool.
CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    # Three conv blocks for 64 px CPU runs: pool output 8x8, last conv ReLU 16x16.
    "vgg_small": [32, "M", 64, "M", 128, 128, "M"],
}
# Spatial size the classifier head sees (AdaptiveAvgPool2d target): 7 for VGG16 (224/227 px),
# 8 for vgg_small (64 px). At the native input size the pool is an identity.
POOL_SIZE = {"vgg16": 7, "vgg_small": 8}
WIDTH_DIVISORS = (1, 2, 4, 8)


class VGG(nn.Module):
    """VGG with the paper's multi-label head: ``Dropout + Linear(C*s*s -> num_classes)``.

    Args:
        arch: ``"vgg16"`` (the paper's teacher) or ``"vgg_small"`` (CPU variant, 64 px input).
        num_classes: outputs of the head (20 for VOC).
        width_divisor: every channel count divided by this (1, 2, 4 or 8: the paper's students).
        batch_norm: BatchNorm after every conv (VGG16-BN, the paper's teacher).
        dropout: dropout probability before the last Linear.
        weights: local path to a state-dict file (torchvision ``vgg16_bn`` ImageNet weights, a
            plain ``state_dict`` or one of our Lightning checkpoints), or, for ``vgg16``, a
            torchvision weight name (``IMAGENET1K_V1``): taken from torch's hub cache, downloaded
            there once when absent. Nothing is downloaded for a path.
        head_pool: side of the average pool before the head (default: 7 for vgg16 as the paper,
            8 for vgg_small); 1 is global average pooling, a translation-invariant head that
            small networks trained from scratch learn with far less data.
        width_multiplier: every channel count multiplied by this before the divisor (an int >= 1).
            2 widens ``vgg_small`` to 64-128-256-256, so that its /8 student keeps 32 channels at
            ``conv5_3`` (VGG16/8 keeps 64; docs/study.md).

    Attributes:
        feature_info: one entry per named attribution layer: ``name`` (``conv1_1`` ... ``pool5``),
            ``module`` (dotted module name), ``num_chs`` and ``reduction`` (input stride).
        attribution_layers: name -> dotted module name: every ``feature_info`` name, plus the
            aliases ``pool5`` (the last max-pool) and ``conv5_3`` (the last conv's ReLU), which
            name those roles whatever the depth (on ``vgg_small``: ``pool3`` and ``conv3_2``).
        default_attribution_layer: ``"pool5"``, where the paper matches maps.
        config: the constructor arguments (minus ``weights``), enough to rebuild the model.

    Raises:
        ValueError: unknown ``arch``, ``width_divisor`` not in (1, 2, 4, 8), ``num_classes`` < 1,
            ``width_multiplier`` not an int >= 1.
        FileNotFoundError: ``weights`` is neither a file nor a torchvision weight name.

    Example:
        >>> model = VGG("vgg_small", num_classes=5, width_divisor=4)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 5])
        >>> model.attribution_layers["pool5"], model.attribution_layers["conv5_3"]
        ('features.14', 'features.13')
    """

    default_attribution_layer = "pool5"

    def __init__(
        self,
        arch: str = "vgg16",
        num_classes: int = 20,
        width_divisor: int = 1,
        batch_norm: bool = True,
        dropout: float = 0.5,
        weights: str | None = None,
        head_pool: int | None = None,
        width_multiplier: int = 1,
    ) -> None:
        super().__init__()
        if arch not in CONFIGS:
            raise ValueError(f"Expected argument `arch` to be one of {sorted(CONFIGS)}, but got {arch!r}.")
        if width_divisor not in WIDTH_DIVISORS:
            raise ValueError(
                f"Expected argument `width_divisor` to be one of {WIDTH_DIVISORS}, but got {width_divisor!r}."
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected argument `num_classes` to be a positive int, but got {num_classes!r}.")
        if head_pool is not None and (isinstance(head_pool, bool) or not isinstance(head_pool, int) or head_pool < 1):
            raise ValueError(f"Expected argument `head_pool` to be None or an int >= 1, but got {head_pool!r}.")
        if isinstance(width_multiplier, bool) or not isinstance(width_multiplier, int) or width_multiplier < 1:
            raise ValueError(f"Expected argument `width_multiplier` to be an int >= 1, but got {width_multiplier!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Expected argument `dropout` to be in [0, 1), but got {dropout!r}.")
        self.arch = arch
        self.num_classes = num_classes
        self.config: dict[str, Any] = {
            "arch": arch,
            "num_classes": num_classes,
            "width_divisor": width_divisor,
            "batch_norm": batch_norm,
            "dropout": dropout,
            "head_pool": head_pool,
            "width_multiplier": width_multiplier,
        }
        self.features, self.feature_info = _make_features(CONFIGS[arch], width_multiplier, width_divisor, batch_norm)
        channels = self.feature_info[-1]["num_chs"]
        pool = POOL_SIZE[arch] if head_pool is None else head_pool
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels * pool * pool, num_classes))
        self.attribution_layers: dict[str, str] = {info["name"]: info["module"] for info in self.feature_info}
        convs = [info for info in self.feature_info if info["name"].startswith("conv")]
        self.attribution_layers["conv5_3"] = convs[-1]["module"]
        self.attribution_layers["pool5"] = self.feature_info[-1]["module"]
        self._init_weights()
        self.weights_source: dict[str, str] | None = None
        if weights == "None":  # jsonargparse turns `--model.init_args.model.init_args.weights null` into 'None'
            weights = None
        if weights is not None:
            path = resolve_weights(weights, arch, batch_norm)
            load_weights(self, path)
            self.weights_source = weights_source(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.features(x))

    def forward_from(self, layer: str, x: torch.Tensor) -> torch.Tensor:
        """Logits from the output ``x`` of ``layer`` (runs only the network after it).

        Lets the frozen teacher's head run on cached features: SWA weights for any class are
        exact without re-running the body.

        Raises:
            ValueError: ``layer`` is not one of the ``features`` layers.

        Example:
            >>> net = VGG("vgg_small", num_classes=3, width_divisor=8).eval()
            >>> images = torch.randn(2, 3, 64, 64)
            >>> torch.allclose(net.forward_from("pool5", net.features(images)), net(images))
            True
        """
        from attrpreserve.models.layers import resolve_layer_name

        name = resolve_layer_name(self, layer)
        prefix, _, index = name.partition(".")
        if prefix != "features" or not index.isdigit():
            raise ValueError(
                f"Expected argument `layer` to name a layer inside `features` (e.g. 'pool5'), but got {layer!r}."
            )
        for module in list(self.features)[int(index) + 1 :]:
            x = module(x)
        return self._head(x)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        # At the native input size the pool's output size equals its input's (7x7 for VGG16 at 224-227 px,
        # 8x8 for vgg_small at 64 px): an identity that still costs a conv's time forward and backward on CPU.
        if tuple(x.shape[-2:]) != self.avgpool.output_size:
            x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation, so students start as the paper's do.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def _make_features(
    plan: list[int | str], multiplier: int, divisor: int, batch_norm: bool
) -> tuple[nn.Sequential, list[dict]]:
    layers: list[nn.Module] = []
    info: list[dict] = []
    in_ch, block, conv_in_block, reduction = 3, 1, 0, 1
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            reduction *= 2
            info.append({"name": f"pool{block}", "module": f"features.{len(layers) - 1}",
                         "num_chs": in_ch, "reduction": reduction})
            block, conv_in_block = block + 1, 0
            continue
        out_ch = int(item) * multiplier // divisor
        layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=False))
        conv_in_block += 1
        info.append({"name": f"conv{block}_{conv_in_block}", "module": f"features.{len(layers) - 1}",
                     "num_chs": out_ch, "reduction": reduction})
        in_ch = out_ch
    return nn.Sequential(*layers), info


def vgg16(
    num_classes: int = 20,
    width_divisor: int = 1,
    batch_norm: bool = True,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> VGG:
    """VGG16(-BN) teacher (``width_divisor=1``) or the paper's students VGG16/2, /4, /8.

    Parameter counts at 20 classes: 15.2M, 3.9M, 1.0M, 0.29M.

    Example:
        >>> sum(p.numel() for p in vgg16(width_divisor=8).parameters())
        294364
    """
    return VGG("vgg16", num_classes=num_classes, width_divisor=width_divisor,
               batch_norm=batch_norm, weights=weights, **kwargs)


def vgg_small(
    num_classes: int = 20,
    width_divisor: int = 1,
    batch_norm: bool = True,
    weights: str | os.PathLike | None = None,
    **kwargs: Any,
) -> VGG:
    """A three-block VGG-BN for 64 px CPU runs (tests, quickstart); same naming as ``vgg16``.

    Its blocks are numbered 1 to 3 (``conv3_2``, ``pool3`` are its last layers); the aliases
    ``pool5`` and ``conv5_3`` still work and mean the last max-pool and the last conv's ReLU
    (see the module docstring), so code and configs written for the teacher run unchanged.

    Example:
        >>> net = vgg_small(num_classes=4)
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 4])
        >>> layers = net.attribution_layers
        >>> layers["pool5"] == layers["pool3"], layers["conv5_3"] == layers["conv3_2"]
        (True, True)
    """
    return VGG("vgg_small", num_classes=num_classes, width_divisor=width_divisor,
               batch_norm=batch_norm, weights=weights, **kwargs)
