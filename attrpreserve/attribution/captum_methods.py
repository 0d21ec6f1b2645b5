"""captum adapter: Integrated Gradients, InputXGradient and captum's DeepLIFT (rescale).

captum is imported on first use. Each call builds the captum object with the model only and
passes everything else to ``attribute`` (captum's ``target`` is our ``classes``), so no state
outlives a call.

Shapes: ``images [B, 3, H, W]``, pairs long ``[N]``; captum runs on the images repeated per pair,
``[N, 3, H, W]`` (chunked by ``internal_batch_size``), and maps are ``[N, H, W]``, the input
attribution summed over colour channels (signed).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from attrpreserve.attribution.registry import _check_chunk, _chunked, _no_layer


def check_captum_deeplift_model(model: nn.Module) -> None:
    """Every leaf is a linear layer or a nonlinearity captum's ``DeepLift`` has a rule for.

    Raises:
        ValueError: naming the first unsupported module.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    linear = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
              nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Flatten,
              nn.Identity)
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, (*linear, *SUPPORTED_NON_LINEAR)):
            raise ValueError(
                f"Method 'deeplift' with backend='captum' supports linear layers and the nonlinearities "
                f"{sorted(t.__name__ for t in SUPPORTED_NON_LINEAR)}, but module {name!r} is a {type(module).__name__}."
            )


def captum_deeplift(model: nn.Module, inputs: Tensor, classes: Tensor, internal_batch_size: int | None) -> Tensor:
    """captum's ``DeepLift`` from a zero baseline on ``inputs [N, 3, H, W]``, summed over colour, ``[N, H, W]``.

    captum 0.9 breaks summation-to-delta when a ReLU sits next to a MaxPool (every VGG block ends
    that way); :func:`attrpreserve.attribution.deeplift.deeplift` does not.
    """
    from captum.attr import DeepLift

    check_captum_deeplift_model(model)

    def one_chunk(x: Tensor, target: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum announces its temporary hooks on every call
            attr = DeepLift(model).attribute(x.clone(), baselines=torch.zeros_like(x), target=target)
        return attr.detach().sum(dim=1)

    return _chunked(one_chunk, inputs, classes, internal_batch_size)


def ig(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
       n_steps: int = 50, integration: str = "gausslegendre", internal_batch_size: int | None = None) -> Tensor:
    """captum ``IntegratedGradients`` from a zero baseline; ``internal_batch_size`` rows per
    forward (default ``N``, i.e. one forward per step)."""
    from captum.attr import IntegratedGradients

    _no_layer("ig", layer)
    _check_chunk(internal_batch_size)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"Expected argument `n_steps` to be a positive int, but got {n_steps!r}.")
    inputs = images[image_index].clone().requires_grad_(True)
    attr = IntegratedGradients(model).attribute(
        inputs, baselines=torch.zeros_like(inputs), target=classes, n_steps=n_steps, method=integration,
        internal_batch_size=internal_batch_size or inputs.shape[0],
    )
    return attr.detach().sum(dim=1)


def input_x_gradient(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
                     layer: str | None = None) -> Tensor:
    """captum ``InputXGradient``."""
    from captum.attr import InputXGradient

    _no_layer("input_x_gradient", layer)
    attr = InputXGradient(model).attribute(images[image_index].clone().requires_grad_(True), target=classes)
    return attr.detach().sum(dim=1)


__all__ = ["captum_deeplift", "check_captum_deeplift_model", "ig", "input_x_gradient"]
