"""Evaluation-time attribution: the public API, one signature for every method, many (image,
class) pairs at once.

``attribute(model, images, classes, method=..., image_index=None)`` returns one map per
(image, class) pair at image resolution. Pairs are given captum-style: ``classes`` is the target
class of each pair and ``image_index`` the image it belongs to (``None``: pair ``i`` is image
``i``, so ``classes`` holds one class per image). A multi-label image contributes one pair per
class.

Shape convention (every method, every caller: training panels, evaluation):

- in: ``images [B, 3, H, W]`` float; pairs ``image_index``, ``classes`` long ``[N]``;
- a method function (:data:`~attrpreserve.attribution.registry.MethodFn`) returns raw maps
  ``[N, h, w]`` at its own resolution (the layer's for layer methods, the image's for input-space
  methods; colour channels summed, signed);
- out: ``[N, H, W]`` detached maps, dtype and device of ``images``: ReLU (when on) at the raw
  resolution, then :func:`upsample` (bilinear, ``align_corners=False``), then optionally
  :func:`minmax`. Training-time maps (``maps.py``) are ``[B, 1, h, w]``; ``heat[:, 0]`` is this
  convention's raw map.

Methods (``METHODS``; add one with :func:`register_method` or :func:`register_layer_method`):

========================  ==================================================  =======================
name                      what (module)                                        default ``relu``
========================  ==================================================  =======================
``gradcam``               Grad-CAM at ``conv5_3`` (``layer_methods``)          True
``swa`` / ``ewa``         the paper's SWA / EWA maps (``maps.py``), ``pool5``  True
``lrp``                   zennit LRP (``zennit_methods``, ``composite`` knob)  False
``ebp``                   zennit Excitation Backprop (``zennit_methods``)      False
``deeplift``              DeepLIFT rescale, zero baseline (``backend`` knob)   False
``deeplift_rc``           DeepLIFT reveal-cancel (ours, ``deeplift``)          False
``ig``                    IntegratedGradients, zero baseline (``captum_...``)  False
``input_x_gradient``      InputXGradient (``captum_methods``)                  False
``center``                centred Gaussian, no model (``baselines``)           False
``rap``                   RAP (ours, Nam et al. 2020, ``rap``)                 False
========================  ==================================================  =======================

``conv5_3``/``pool5`` name the last conv's ReLU and the last max-pool of any of our VGGs,
whatever the depth (see :mod:`attrpreserve.models.layers`).

How pairs are batched (throughput):

- Layer methods (:mod:`~attrpreserve.attribution.layer_methods`) run the network **once** on the
  ``B`` images, capturing the layer as training does, and one backward per round of at most one
  pair per image. :func:`predict_and_attribute` also returns the logits of that same forward, so
  an evaluation pays one forward per batch for predictions and maps.
- Input-space methods run on the images repeated per pair (``[N, 3, H, W]``), one backward for all
  (chunked by ``internal_batch_size`` where the method offers it).

Every call runs inside :func:`attribution_scope`: eval mode, all ``requires_grad`` flags off (so no
graph is recorded before the attributed layer, and no parameter gradient is computed) and grad
mode on; the train/eval flag of every module and every flag are restored afterwards. zennit
composites (and the BatchNorm merge of their canonizer) live only inside the call, through
zennit's context manager.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrpreserve.attribution.baselines import center_map
from attrpreserve.attribution.captum_methods import ig, input_x_gradient
from attrpreserve.attribution.deeplift import DEEPLIFT_BACKENDS, deeplift_map, deeplift_rc_map
from attrpreserve.attribution.layer_methods import (
    LayerRule,
    ewa_combine,
    gradcam_combine,
    layer_maps,
    layer_pass,
    register_layer_method,
    swa_combine,
)
from attrpreserve.attribution.rap import rap_map
from attrpreserve.attribution.registry import (
    METHODS,
    MethodFn,
    MethodSpec,
    check_method,
    get_method,
    method_knobs,
    register_method,
)
from attrpreserve.attribution.zennit_methods import LRP_COMPOSITES, ebp, lrp


# -- scoping ---------------------------------------------------------------------------------------
@contextmanager
def attribution_scope(*models: nn.Module | None) -> Iterator[None]:
    """Set up for attribution: eval mode, all ``requires_grad`` off and grad mode **on** (even
    inside ``torch.no_grad`` or ``torch.inference_mode``), so a backward reaches the inputs or a
    captured layer and no parameter gradient is computed. Every module's ``training`` flag and
    every parameter's ``requires_grad`` flag are restored afterwards, also on error. ``None``
    entries are skipped.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with torch.no_grad(), attribution_scope(net):
        ...     net.training, net[0].weight.requires_grad, torch.is_grad_enabled()
        (False, False, True)
        >>> net.training, net[0].weight.requires_grad
        (True, True)
    """
    modes: list[tuple[nn.Module, bool]] = []
    flags: list[tuple[nn.Parameter, bool]] = []
    for model in models:
        if model is None:
            continue
        modes += [(m, m.training) for m in model.modules()]
        flags += [(p, p.requires_grad) for p in model.parameters()]
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            for model in models:
                if model is not None:
                    model.eval()
            for param, _ in flags:
                param.requires_grad_(False)
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in flags:
            param.requires_grad_(flag)


_EVAL_SCOPE_WARNED = False


def eval_scope(*models: nn.Module | None) -> AbstractContextManager[None]:
    """Deprecated alias of :func:`attribution_scope` (the name hid that it turns gradients on).

    Warns once per process with a ``DeprecationWarning``.
    """
    global _EVAL_SCOPE_WARNED
    if not _EVAL_SCOPE_WARNED:
        _EVAL_SCOPE_WARNED = True
        warnings.warn("`eval_scope` is deprecated: use `attribution_scope` (same behaviour: eval mode, "
                      "requires_grad off, grad mode on).", DeprecationWarning, stacklevel=2)
    return attribution_scope(*models)


# -- the public entry point -------------------------------------------------------------------------
def attribute(
    model: nn.Module,
    images: Tensor,
    classes: int | Sequence[int] | Tensor,
    method: str = "gradcam",
    *,
    image_index: Sequence[int] | Tensor | None = None,
    layer: str | None = None,
    relu: bool | None = None,
    normalize: bool = False,
    **knobs: Any,
) -> Tensor:
    """One attribution map per (image, class) pair, at image resolution, in as few passes as possible.

    Args:
        model: classifier ``[B, 3, H, W] -> [B, K]`` logits; put in eval mode for the call and
            restored to its previous train/eval and ``requires_grad`` state afterwards.
        images: ``[B, 3, H, W]`` float batch (normalised as the model expects).
        classes: target class of each pair: long ``[N]`` (or a sequence of ints, or one int for
            every image when ``image_index`` is ``None``).
        method: a name in :data:`METHODS` (see the module docstring).
        image_index: long ``[N]``, the image of each pair (values in ``[0, B)``); ``None`` means
            ``N == B`` and pair ``i`` is image ``i``.
        layer: attribution layer of the layer methods (alias such as ``"conv5_3"``/``"pool5"`` or a
            dotted module name; ``None``: ``conv5_3`` for Grad-CAM, the model default for SWA/EWA).
            Input-space methods take no layer.
        relu: clamp maps at zero (at the layer's resolution, before upsampling); ``None`` uses the
            method's default (True for ``gradcam``/``swa``/``ewa``, False otherwise).
        normalize: min-max each map to [0, 1] (a constant map becomes zeros). Default False; the
            evaluation protocol normalises.
        **knobs: method options: ``lrp``: ``composite`` (``"epsilon_plus_flat"`` default,
            ``"epsilon_plus"``, ``"alpha1_beta0"``), ``epsilon``, ``stabilizer``, ``relevance``
            (``"logit"`` or ``"one"``); ``ebp``: ``stabilizer``; ``deeplift``: ``backend``
            (``"attrpreserve"`` default, ``"captum"``), ``internal_batch_size``; ``deeplift_rc``:
            ``internal_batch_size``; ``ig``: ``n_steps`` (50), ``integration`` (captum's ``method``,
            ``"gausslegendre"``), ``internal_batch_size``
            (default ``N``).

    Returns:
        ``[N, H, W]`` detached maps, dtype and device of ``images``.

    Raises:
        ValueError: unknown method or knob, a bad ``images``/``classes``/``image_index`` (shape,
            dtype, range), a layer unknown to the model (the message lists the valid ones), a
            layer given to an input-space method, or a model the method does not support.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> net = vgg_small(num_classes=3, width_divisor=8)
        >>> images = torch.randn(2, 3, 32, 32)
        >>> maps = attribute(net, images, torch.tensor([0, 2, 1]), image_index=torch.tensor([0, 0, 1]))
        >>> tuple(maps.shape), bool((maps >= 0).all())
        ((3, 32, 32), True)
    """
    spec = _check_call(model, images, method, relu, normalize, knobs)
    image_index, classes = _check_pairs(images, classes, image_index, getattr(model, "num_classes", None))
    if classes.numel() == 0:
        return images.new_zeros(0, *images.shape[-2:])
    with attribution_scope(model):
        if images.is_inference():
            images = images.clone()
        raw = spec.fn(model, images.detach(), image_index, classes, layer=layer, **knobs)
    return _finish(raw, spec, method, classes.numel(), images, relu, normalize)


def predict_and_attribute(
    model: nn.Module,
    images: Tensor,
    select: Callable[[Tensor], tuple[Tensor, Tensor]],
    method: str = "gradcam",
    *,
    layer: str | None = None,
    relu: bool | None = None,
    normalize: bool = False,
    **knobs: Any,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Logits of the batch and maps of the pairs chosen from them, sharing one forward where possible.

    For layer methods (Grad-CAM, SWA, EWA) the forward that yields the logits also yields the
    layer's features, so the prediction costs nothing extra; other methods run a separate
    ``torch.no_grad`` forward for the logits, then :func:`attribute`. Maps equal
    ``attribute(model, images, classes, method, image_index=image_index, ...)``.

    Args:
        model, images, method, layer, relu, normalize, knobs: as :func:`attribute`.
        select: ``logits [B, K] -> (image_index [N], classes [N])``, the pairs to attribute
            (e.g. the ground-truth classes with a positive logit).

    Returns:
        ``(logits [B, K], image_index [N], classes [N], maps [N, H, W])``, all detached.

    Raises:
        ValueError: as :func:`attribute` (pairs returned by ``select`` are checked the same way).

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> net = vgg_small(num_classes=3, width_divisor=8)
        >>> images = torch.randn(2, 3, 32, 32)
        >>> logits, index, classes, maps = predict_and_attribute(
        ...     net, images, lambda z: (torch.tensor([0, 1]), z.argmax(dim=1)))
        >>> torch.equal(maps, attribute(net, images, classes, image_index=index))
        True
    """
    spec = _check_call(model, images, method, relu, normalize, knobs)
    if not callable(select):
        raise ValueError(f"Expected argument `select` to be callable, but got {select!r}.")
    rule = spec.layer_rule
    with attribution_scope(model):
        if images.is_inference():
            images = images.clone()
        images = images.detach()
        if rule is not None:
            features, logits = layer_pass(model, images, rule, layer)
        else:
            with torch.no_grad():
                logits = model(images)
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != images.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"Expected the model output to be [B={images.shape[0]}, K] logits, but got {shape}.")
        picked = select(logits.detach())
        if not isinstance(picked, tuple) or len(picked) != 2:
            raise ValueError(f"Expected `select` to return (image_index, classes), but got {type(picked).__name__}.")
        image_index, classes = _check_pairs(images, picked[1], picked[0], logits.shape[1])
        if classes.numel() == 0:
            raw = images.new_zeros(0, 1, 1)
        elif rule is not None:
            raw = layer_maps(rule, features, logits, image_index, classes)
        else:
            raw = spec.fn(model, images, image_index, classes, layer=layer, **knobs)
    maps = _finish(raw, spec, method, classes.numel(), images, relu, normalize)
    return logits.detach(), image_index, classes, maps


def _check_call(model: Any, images: Any, method: str, relu: Any, normalize: Any, knobs: dict[str, Any]) -> MethodSpec:
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected argument `model` to be a torch.nn.Module, but got {type(model).__name__}.")
    spec = get_method(method)
    check_method(method, knobs)
    if relu is not None and not isinstance(relu, bool):
        raise ValueError(f"Expected argument `relu` to be a bool or None, but got {relu!r}.")
    if not isinstance(normalize, bool):
        raise ValueError(f"Expected argument `normalize` to be a bool, but got {normalize!r}.")
    _check_images(images)
    return spec


def _finish(raw: Any, spec: MethodSpec, method: str, n: int, images: Tensor, relu: bool | None,
            normalize: bool) -> Tensor:
    """Check the method's raw maps, then ReLU (at their resolution), upsample, normalise."""
    if not isinstance(raw, Tensor) or raw.ndim != 3 or raw.shape[0] != n:
        shape = tuple(raw.shape) if isinstance(raw, Tensor) else type(raw).__name__
        raise ValueError(f"Expected method {method!r} to return [N={n}, h, w] maps, but got {shape}.")
    maps = raw.detach().to(images.dtype)
    if spec.relu if relu is None else relu:
        maps = maps.clamp(min=0)
    maps = upsample(maps, tuple(images.shape[-2:]))
    return minmax(maps) if normalize else maps


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``) resize of ``[N, h, w]`` maps to ``[N, *size]``.

    Example:
        >>> upsample(torch.tensor([[[0.0, 4.0]]]), (1, 4))
        tensor([[[0., 1., 3., 4.]]])
    """
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max to [0, 1] over ``[N, H, W]``; a constant map becomes zeros.

    Example:
        >>> minmax(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
        tensor([[[0., 1.]],
        <BLANKLINE>
                [[0., 0.]]])
    """
    if maps.numel() == 0:
        return maps
    flat = maps.flatten(1)
    low = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - low
    ok = span > 0
    out = torch.where(ok, (flat - low) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(flat))
    return out.view_as(maps)


# -- argument checks -------------------------------------------------------------------------------
def _check_images(images: Any) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or not images.is_floating_point():
        got = (f"shape {tuple(images.shape)} dtype {images.dtype}" if isinstance(images, Tensor)
               else type(images).__name__)
        raise ValueError(f"Expected argument `images` to be a float [B, C, H, W] tensor, but got {got}.")


def _as_index(value: Any, name: str, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"Expected argument `{name}` to be a 1-D integer tensor or sequence, "
                             f"but got {value!r:.80}.") from None
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool or tensor.ndim > 1:
        raise ValueError(f"Expected argument `{name}` to be a 1-D integer tensor, but got dtype {tensor.dtype} "
                         f"shape {tuple(tensor.shape)}.")
    return tensor.reshape(-1).to(device=device, dtype=torch.long)


def _check_pairs(
    images: Tensor, classes: Any, image_index: Any, num_classes: int | None
) -> tuple[Tensor, Tensor]:
    batch = images.shape[0]
    if image_index is None and isinstance(classes, int) and not isinstance(classes, bool):
        classes = [classes] * batch
    classes_t = _as_index(classes, "classes", images.device)
    if image_index is None:
        if classes_t.numel() != batch:
            raise ValueError(f"Expected argument `classes` to hold one class per image ({batch}) when "
                             f"`image_index` is None, but got {classes_t.numel()}.")
        index_t = torch.arange(batch, device=images.device)
    else:
        index_t = _as_index(image_index, "image_index", images.device)
        if index_t.numel() != classes_t.numel():
            raise ValueError(f"Expected arguments `image_index` and `classes` to have the same length, but got "
                             f"{index_t.numel()} and {classes_t.numel()}.")
        if index_t.numel() and bool(((index_t < 0) | (index_t >= batch)).any()):
            raise ValueError(f"Expected argument `image_index` to lie in [0, {batch}), but got values from "
                             f"{int(index_t.min())} to {int(index_t.max())}.")
    if classes_t.numel() and bool((classes_t < 0).any()):
        raise ValueError(f"Expected argument `classes` to be >= 0, but got {int(classes_t.min())}.")
    if isinstance(num_classes, int) and classes_t.numel() and bool((classes_t >= num_classes).any()):
        raise ValueError(f"Expected argument `classes` to lie in [0, {num_classes}), but got {int(classes_t.max())}.")
    return index_t, classes_t


register_layer_method("gradcam", gradcam_combine, default_layer="conv5_3")
register_layer_method("swa", swa_combine)
register_layer_method("ewa", ewa_combine, needs_grad=False)
register_method("lrp", lrp)
register_method("ebp", ebp)
register_method("deeplift", deeplift_map)
register_method("deeplift_rc", deeplift_rc_map)
register_method("ig", ig)
register_method("input_x_gradient", input_x_gradient)
register_method("center", center_map)  # model-free baseline (attribution/baselines.py)
register_method("rap", rap_map)  # Relative Attributing Propagation (attribution/rap.py)

__all__ = [
    "METHODS", "MethodFn", "MethodSpec", "LayerRule", "LRP_COMPOSITES", "DEEPLIFT_BACKENDS", "attribute",
    "attribution_scope", "check_method", "eval_scope", "get_method", "method_knobs", "minmax",
    "predict_and_attribute", "register_layer_method", "register_method", "upsample",
]
