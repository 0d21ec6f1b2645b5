"""Evaluation-time attribution methods behind one signature, computed for many (image, class) pairs at once.

``attribute(model, images, classes, method=..., image_index=None)`` returns one map per
(image, class) pair at image resolution, ``[N, H, W]``. Pairs are given captum-style: ``classes``
is the target class of each pair and ``image_index`` the image it belongs to (``None``: pair ``i``
is image ``i``, so ``classes`` holds one class per image). A multi-label image contributes one
pair per class.

Methods (``METHODS``; add one with :func:`register_method`):

========================  ==================================================  =======================
name                      what                                                 default ``relu``
========================  ==================================================  =======================
``gradcam``               Grad-CAM at ``conv5_3`` (last conv's ReLU)           True
``swa`` / ``ewa``         the paper's SWA / EWA maps (``maps.py``), ``pool5``  True
``lrp``                   zennit LRP (``composite`` knob, VGG canonizer)       False
``ebp``                   zennit Excitation Backprop (VGG canonizer)           False
``deeplift``              DeepLIFT rescale, zero baseline (``backend`` knob)   False
``deeplift_rc``           DeepLIFT reveal-cancel (ours), zero baseline         False
``ig``                    captum IntegratedGradients, zero baseline            False
``input_x_gradient``      captum InputXGradient                                False
``center``                centred Gaussian, no model (baseline, ``sigma``)     False
``rap``                   RAP (ours, Nam et al. 2020), VGG-style chains        False
========================  ==================================================  =======================

Input-space maps are summed over colour channels (signed). Layer maps (Grad-CAM, SWA, EWA) are
ReLU'd at the layer's resolution when ``relu`` is on, then upsampled bilinearly
(``align_corners=False``) to the image.

How pairs are batched (throughput):

- Layer methods (:func:`register_layer_method`) run the network **once** on the ``B`` images; a
  forward hook swaps the layer's output for a detached copy requiring grad, so autograd records
  only the part after the layer. Pairs are split into rounds of at most one pair per image; one
  ``torch.autograd.grad`` per round (seeded with the one-hot targets of its pairs) gives all its
  pairs' gradients, since images do not interact in eval mode. Rounds = the largest number of
  pairs of one image (1-4 on VOC). :func:`predict_and_attribute` also returns the logits of that
  same forward, so an evaluation pays one forward per batch for predictions and maps.
- Input-space methods run on the images repeated per pair (``[N, 3, H, W]``), one backward for all
  (chunked by ``internal_batch_size`` where the method offers it).

Every call puts the model in eval mode with all ``requires_grad`` flags off (so no graph is
recorded before the attributed layer, and no parameter gradient is computed) and restores the
train/eval flag of every module and every flag afterwards. zennit composites (and the BatchNorm
merge of their canonizer) live only inside the call, through zennit's context manager.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attrpreserve.attribution.baselines import center_map
from attrpreserve.attribution.maps import channel_weights, ewa_map
from attrpreserve.attribution.rap import rap_map
from attrpreserve.models.layers import resolve_layer_name

MethodFn = Callable[..., Tensor]
"""``fn(model, images, image_index, classes, *, layer=None, **knobs) -> Tensor [N, h, w]``.

Called with the model already in eval mode (all ``requires_grad`` off, grad mode on); ``images``
``[B, 3, H, W]``, ``image_index`` and ``classes`` long ``[N]`` (validated, ``N >= 1``). Returns the
raw map of each pair at any resolution (``attribute`` applies ReLU, upsampling, normalisation).
"""


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, the default of ``attribute``'s ``relu`` flag, and for
    layer methods their :class:`LayerRule` (lets :func:`predict_and_attribute` share the forward)."""

    fn: MethodFn
    relu: bool = False
    layer_rule: LayerRule | None = None


METHODS: dict[str, MethodSpec] = {}
"""Registry: method name -> :class:`MethodSpec` (fill with :func:`register_method`)."""

_FIXED_PARAMS = ("model", "images", "image_index", "classes", "layer")
LRP_COMPOSITES = ("epsilon_plus_flat", "epsilon_plus", "alpha1_beta0")
DEEPLIFT_BACKENDS = ("attrpreserve", "captum")


def register_method(name: str, fn: MethodFn, *, relu: bool = False, overwrite: bool = False) -> None:
    """Add an attribution method to :data:`METHODS` under ``name``.

    Args:
        name: the ``method`` string of :func:`attribute`.
        fn: see :data:`MethodFn`; keyword parameters after ``layer`` are the method's knobs.
        relu: default of ``attribute``'s ``relu`` flag for this method.
        overwrite: replace an existing method of that name (otherwise an error).

    Raises:
        ValueError: ``name`` not a non-empty str, ``fn`` not callable, or ``name`` taken.

    Example:
        >>> def mean_colour(model, images, image_index, classes, *, layer=None):
        ...     return images[image_index].mean(dim=1)
        >>> register_method("mean_colour", mean_colour)
        >>> attribute(nn.Identity(), torch.ones(1, 3, 2, 2), [0], "mean_colour")
        tensor([[[1., 1.],
                 [1., 1.]]])
        >>> _ = METHODS.pop("mean_colour")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected argument `name` to be a non-empty str, but got {name!r}.")
    if not callable(fn):
        raise ValueError(f"Expected argument `fn` to be callable, but got {fn!r}.")
    if not isinstance(relu, bool):
        raise ValueError(f"Expected argument `relu` to be a bool, but got {relu!r}.")
    if name in METHODS and not overwrite:
        raise ValueError(f"Expected argument `name` to be a new method name, but {name!r} is registered; "
                         "pass overwrite=True to replace it.")
    METHODS[name] = MethodSpec(fn, relu)


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).

    Example:
        >>> get_method("gradcam").relu
        True
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"Expected argument `method` to be one of {sorted(METHODS)}, but got {name!r}.")
    return METHODS[name]


def method_knobs(name: str) -> tuple[str, ...] | None:
    """Names of the knobs method ``name`` accepts (``None``: any, the function takes ``**kwargs``).

    Example:
        >>> method_knobs("ig")
        ('n_steps', 'integration', 'internal_batch_size')
    """
    params = inspect.signature(get_method(name).fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    positional = inspect.Parameter.VAR_POSITIONAL
    return tuple(p.name for p in params if p.name not in _FIXED_PARAMS and p.kind is not positional)


def check_method(name: str, knobs: dict[str, Any] | None = None) -> None:
    """Check that ``name`` is registered and accepts every key of ``knobs`` (no work done).

    Raises:
        ValueError: unknown method, or a knob it does not take (the message lists the valid ones).

    Example:
        >>> check_method("gradcam", {"n_steps": 8})
        Traceback (most recent call last):
        ...
        ValueError: Expected the knobs of method 'gradcam' to be among (none), but got unknown ['n_steps'].
    """
    get_method(name)
    accepted = method_knobs(name)
    unknown = sorted(set(knobs or {}) - set(accepted)) if accepted is not None else []
    if unknown:
        allowed = ", ".join(accepted) if accepted else "(none)"
        raise ValueError(f"Expected the knobs of method {name!r} to be among {allowed}, but got unknown {unknown}.")


# -- scoping ---------------------------------------------------------------------------------------
@contextmanager
def eval_scope(*models: nn.Module | None) -> Iterator[None]:
    """Eval mode, all ``requires_grad`` off and grad mode on (even inside ``torch.inference_mode``)
    for the block; every module's ``training`` flag and every parameter's ``requires_grad`` flag
    are restored afterwards, also on error. ``None`` entries are skipped.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> with eval_scope(net):
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
    with eval_scope(model):
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
    with eval_scope(model):
        if images.is_inference():
            images = images.clone()
        images = images.detach()
        if rule is not None:
            features, logits = _layer_pass(model, images, rule.default_layer if layer is None else layer,
                                           rule.needs_grad)
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
            raw = _layer_maps(rule, features, logits, image_index, classes)
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


def _no_layer(method: str, layer: str | None) -> None:
    if layer is not None:
        raise ValueError(f"Expected argument `layer` to be None for method {method!r}, which attributes to the "
                         f"input, but got {layer!r}.")


def _check_output(logits: Tensor, rows: int, classes: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != rows:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected the model output to be [N={rows}, K] logits, but got {shape}.")
    if bool((classes >= logits.shape[1]).any()):
        raise ValueError(f"Expected argument `classes` to lie in [0, {logits.shape[1]}), but got "
                         f"{int(classes.max())}.")


# -- layer methods ----------------------------------------------------------------------------------
def _layer_pass(model: nn.Module, images: Tensor, layer: str | None, needs_grad: bool) -> tuple[Tensor, Tensor]:
    """One forward of the ``B`` images: ``(features [B, C, h, w], logits [B, K])``.

    A forward hook swaps the layer's output for a detached copy (requiring grad when
    ``needs_grad``), so autograd records only the network after the layer.
    """
    name = resolve_layer_name(model, layer)
    store: dict[str, Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: Any) -> Tensor:
        if "features" in store:
            raise ValueError(f"Layer {layer!r} ({name}) runs more than once per forward; pick a layer used once.")
        if not isinstance(output, Tensor) or output.ndim != 4:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(f"Expected the output of layer {layer!r} ({name}) to be [B, C, h, w], but got {shape}.")
        store["features"] = output.detach().requires_grad_(needs_grad)
        return store["features"]

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        with torch.set_grad_enabled(needs_grad):
            logits = model(images)
    finally:
        handle.remove()
    if "features" not in store:
        raise ValueError(f"Layer {layer!r} ({name}) did not run in the model's forward.")
    return store["features"], logits


def _pair_grads(logits: Tensor, features: Tensor, image_index: Tensor, classes: Tensor) -> Tensor:
    """``d logits[i_n, k_n] / d features[i_n]`` for every pair ``n``, ``[N, C, h, w]``.

    Pairs are split into rounds holding at most one pair per image (round ``r``: each image's
    ``r``-th pair); one backward per round through the part after the layer gives all its
    pairs' gradients, since images do not interact in eval mode.
    """
    if not logits.requires_grad:
        raise ValueError("Expected the model's logits to depend on the attribution layer's output, but they do not.")
    n = image_index.numel()
    order = torch.argsort(image_index, stable=True)
    position = torch.arange(n, device=image_index.device)
    starts = torch.ones(n, dtype=torch.bool, device=image_index.device)
    starts[1:] = image_index[order][1:] != image_index[order][:-1]
    rank = torch.empty_like(position)
    rank[order] = position - torch.where(starts, position, 0).cummax(dim=0).values
    rounds = int(rank.max()) + 1
    grads = features.new_empty((n, *features.shape[1:]))
    for r in range(rounds):
        chosen = (rank == r).nonzero()[:, 0]
        seed = torch.zeros_like(logits)
        seed[image_index[chosen], classes[chosen]] = 1.0
        (grad,) = torch.autograd.grad(logits, features, seed, retain_graph=r < rounds - 1)
        grads[chosen] = grad[image_index[chosen]]
    return grads


@dataclass(frozen=True)
class LayerRule:
    """How a layer method turns features and gradients into a map.

    Attributes:
        combine: ``(features [N, C, h, w], grads [N, C, h, w] or None) -> [N, h, w]``.
        needs_grad: whether ``combine`` uses the gradient of the target logit.
        default_layer: layer used when ``layer`` is ``None`` (``None``: the model's default).
    """

    combine: Callable[[Tensor, Tensor | None], Tensor]
    needs_grad: bool = True
    default_layer: str | None = None


def _layer_maps(rule: LayerRule, features: Tensor, logits: Tensor, image_index: Tensor, classes: Tensor) -> Tensor:
    grads = _pair_grads(logits, features, image_index, classes) if rule.needs_grad else None
    return rule.combine(features.detach()[image_index], grads)


def register_layer_method(
    name: str,
    combine: Callable[[Tensor, Tensor | None], Tensor],
    *,
    needs_grad: bool = True,
    default_layer: str | None = None,
    relu: bool = True,
    overwrite: bool = False,
) -> None:
    """Register a map computed from a layer's activations and target-logit gradients.

    The method runs one forward per image batch and one backward per round of pairs (see
    :func:`attribute`), and can share its forward with the prediction
    (:func:`predict_and_attribute`).

    Args:
        name: the ``method`` string.
        combine: see :class:`LayerRule`.
        needs_grad: pass gradients to ``combine`` (else ``None``, and no backward runs).
        default_layer: layer alias used when the caller gives none (``None``: the model default).
        relu: default of the ``relu`` flag.
        overwrite: replace an existing method of that name.

    Raises:
        ValueError: as :func:`register_method`, or ``combine`` not callable.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> register_layer_method("grad_norm", lambda a, g: g.norm(dim=1), default_layer="conv5_3")
        >>> net = vgg_small(num_classes=2, width_divisor=8)
        >>> tuple(attribute(net, torch.randn(1, 3, 32, 32), [1], "grad_norm").shape)
        (1, 32, 32)
        >>> _ = METHODS.pop("grad_norm")
    """
    if not callable(combine):
        raise ValueError(f"Expected argument `combine` to be callable, but got {combine!r}.")
    rule = LayerRule(combine, bool(needs_grad), default_layer)

    def fn(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
           layer: str | None = None) -> Tensor:
        features, logits = _layer_pass(model, images, rule.default_layer if layer is None else layer, rule.needs_grad)
        _check_output(logits, images.shape[0], classes)
        return _layer_maps(rule, features, logits, image_index, classes)

    fn.__doc__ = f"Layer method {name!r} (see register_layer_method)."
    register_method(name, fn, relu=relu, overwrite=overwrite)
    METHODS[name] = MethodSpec(fn, relu, rule)


def _needed(grads: Tensor | None) -> Tensor:
    if grads is None:
        raise ValueError("This layer rule needs gradients: register it with needs_grad=True.")
    return grads


def _gradcam_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """Grad-CAM: ``sum_c mean_hw(dy/dA_c) * A_c``."""
    return (_needed(grads).mean(dim=(2, 3), keepdim=True) * features).sum(dim=1)


def _swa_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """SWA: ``sum_c w_c * A_c``, ``w_c = sum_hw dy/dA_c`` (:func:`~attrpreserve.attribution.maps.channel_weights`)."""
    return (channel_weights(_needed(grads)) * features).sum(dim=1)


def _ewa_combine(features: Tensor, grads: Tensor | None) -> Tensor:
    """EWA (:func:`~attrpreserve.attribution.maps.ewa_map`): class-independent, one map per image."""
    return ewa_map(features)[:, 0]


# -- zennit methods ---------------------------------------------------------------------------------
_ZENNIT_LEAVES = (nn.Dropout, nn.Flatten, nn.Identity)


def _check_zennit_model(model: nn.Module, method: str) -> None:
    """zennit rules see modules, not functions: the model must be a chain of supported leaves in
    forward order, with every BatchNorm right after a conv/linear (what the VGG canonizer merges)."""
    from zennit.core import collect_leaves
    from zennit.types import Activation, AvgPool, BatchNorm, Linear, MaxPool

    names = {id(m): n for n, m in model.named_modules()}
    previous: nn.Module | None = None
    found_linear = False
    for leaf in collect_leaves(model):
        name = names.get(id(leaf), "?")
        if isinstance(leaf, BatchNorm):
            if not isinstance(previous, Linear):
                raise ValueError(
                    f"Method {method!r} (zennit, VGG canonizer) needs every BatchNorm right after a conv/linear layer "
                    f"so it can be merged into it, but {name!r} follows {type(previous).__name__}."
                )
        elif isinstance(leaf, Linear):
            found_linear = True
        elif not isinstance(leaf, (Activation, AvgPool, MaxPool, *_ZENNIT_LEAVES)):
            raise ValueError(
                f"Method {method!r} (zennit) supports VGG-style models built from conv/linear, BatchNorm, activation, "
                f"pooling, dropout and flatten modules, but module {name!r} is a {type(leaf).__name__}."
            )
        previous = leaf
    if not found_linear:
        raise ValueError(f"Method {method!r} (zennit) needs a model with conv or linear layers; "
                         f"{type(model).__name__} has none.")


def _exact_vgg_canonizer() -> Any:
    """zennit's ``VGGCanonizer`` with the merged BatchNorm made an exact identity for the call.

    zennit folds ``gamma / sqrt(var + eps)`` into the conv and resets the BatchNorm to
    ``var = 1``, which still divides by ``sqrt(1 + eps)``: every merged layer scales outputs and
    relevance by ``(1 + eps) ** -0.5`` (about 2e-5 over four layers). Setting ``eps = 0`` while
    merged removes that; ``remove()`` restores it with the other parameters.
    """
    from zennit.torchvision import VGGCanonizer

    class ExactVGGCanonizer(VGGCanonizer):
        def register(self, linears: Any, batch_norm: nn.Module) -> None:
            super().register(linears, batch_norm)
            self.batch_norm_eps = batch_norm.eps
            batch_norm.eps = 0.0

        def remove(self) -> None:
            super().remove()
            self.batch_norm.eps = self.batch_norm_eps

    return ExactVGGCanonizer()


def _zennit_attribute(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, composite: Any,
                      scale_by_logit: bool) -> Tensor:
    """Input relevance summed over colour channels, ``[N, H, W]``; output relevance is the one-hot
    target, times the target logit when ``scale_by_logit``."""
    from zennit.attribution import Gradient

    inputs = images[image_index].clone().requires_grad_(True)

    def attr_output(output: Tensor) -> Tensor:
        _check_output(output, classes.numel(), classes)
        target = torch.zeros_like(output)
        value = output.detach().gather(1, classes[:, None]) if scale_by_logit else 1.0
        return target.scatter_(1, classes[:, None], value)

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(inputs, attr_output)
    return relevance.detach().sum(dim=1)


def _lrp(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
         composite: str = "epsilon_plus_flat", epsilon: float = 1e-6, stabilizer: float = 1e-6,
         relevance: str = "logit") -> Tensor:
    """LRP with a zennit composite and ``VGGCanonizer`` (BatchNorm merged for the call only)."""
    from zennit.composites import EpsilonPlus, EpsilonPlusFlat, LayerMapComposite, layer_map_base
    from zennit.rules import AlphaBeta
    from zennit.types import Linear

    _no_layer("lrp", layer)
    if composite not in LRP_COMPOSITES:
        raise ValueError(f"Expected argument `composite` to be one of {LRP_COMPOSITES}, but got {composite!r}.")
    if relevance not in ("logit", "one"):
        raise ValueError(f"Expected argument `relevance` to be 'logit' or 'one', but got {relevance!r}.")
    for name, value in (("epsilon", epsilon), ("stabilizer", stabilizer)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Expected argument `{name}` to be a number >= 0, but got {value!r}.")
    _check_zennit_model(model, "lrp")
    canonizers = [_exact_vgg_canonizer()]
    if composite == "epsilon_plus_flat":
        rules = EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    elif composite == "epsilon_plus":
        rules = EpsilonPlus(epsilon=epsilon, stabilizer=stabilizer, canonizers=canonizers)
    else:
        layer_map = layer_map_base(stabilizer) + [(Linear, AlphaBeta(alpha=1.0, beta=0.0, stabilizer=stabilizer))]
        rules = LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    return _zennit_attribute(model, images, image_index, classes, rules, scale_by_logit=relevance == "logit")


def _ebp(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
         stabilizer: float = 1e-6) -> Tensor:
    """Excitation Backprop (zennit composite, ``VGGCanonizer``) from a one-hot top-down signal."""
    from zennit.composites import ExcitationBackprop

    _no_layer("ebp", layer)
    if isinstance(stabilizer, bool) or not isinstance(stabilizer, (int, float)) or stabilizer < 0:
        raise ValueError(f"Expected argument `stabilizer` to be a number >= 0, but got {stabilizer!r}.")
    _check_zennit_model(model, "ebp")
    rules = ExcitationBackprop(stabilizer=stabilizer, canonizers=[_exact_vgg_canonizer()])
    return _zennit_attribute(model, images, image_index, classes, rules, scale_by_logit=False)


# -- DeepLIFT, IG, InputXGradient -------------------------------------------------------------------
def _check_chunk(value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"Expected argument `internal_batch_size` to be a positive int or None, but got {value!r}.")


def _chunked(fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, classes: Tensor, size: int | None) -> Tensor:
    size = size or inputs.shape[0]
    return torch.cat([fn(inputs[i:i + size], classes[i:i + size]) for i in range(0, inputs.shape[0], size)])


def _check_captum_deeplift_model(model: nn.Module) -> None:
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    linear = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
              nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, *_ZENNIT_LEAVES)
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, (*linear, *SUPPORTED_NON_LINEAR)):
            raise ValueError(
                f"Method 'deeplift' with backend='captum' supports linear layers and the nonlinearities "
                f"{sorted(t.__name__ for t in SUPPORTED_NON_LINEAR)}, but module {name!r} is a {type(module).__name__}."
            )


def _deeplift(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
              backend: str = "attrpreserve", internal_batch_size: int | None = None) -> Tensor:
    """DeepLIFT, rescale rule, zero baseline.

    ``backend="attrpreserve"`` (default) is :func:`attrpreserve.attribution.deeplift.deeplift`,
    exact summation-to-delta. ``backend="captum"`` is captum's ``DeepLift``; captum 0.9 breaks
    summation-to-delta when a ReLU sits next to a MaxPool (every VGG block ends that way).
    """
    _no_layer("deeplift", layer)
    _check_chunk(internal_batch_size)
    if backend not in DEEPLIFT_BACKENDS:
        raise ValueError(f"Expected argument `backend` to be one of {DEEPLIFT_BACKENDS}, but got {backend!r}.")
    inputs = images[image_index]
    if backend == "attrpreserve":
        from attrpreserve.attribution.deeplift import deeplift

        def ours(x: Tensor, target: Tensor) -> Tensor:
            return deeplift(model, x, target, baseline=None, rule="rescale").sum(dim=1)

        return _chunked(ours, inputs, classes, internal_batch_size)
    from captum.attr import DeepLift

    _check_captum_deeplift_model(model)

    def captum_deeplift(x: Tensor, target: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # captum announces its temporary hooks on every call
            attr = DeepLift(model).attribute(x.clone(), baselines=torch.zeros_like(x), target=target)
        return attr.detach().sum(dim=1)

    return _chunked(captum_deeplift, inputs, classes, internal_batch_size)


def _deeplift_rc(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
                 layer: str | None = None, internal_batch_size: int | None = None) -> Tensor:
    """DeepLIFT with the reveal-cancel rule (ours, imported on first use), zero baseline."""
    from attrpreserve.attribution.deeplift import deeplift

    _no_layer("deeplift_rc", layer)
    _check_chunk(internal_batch_size)

    def reveal_cancel(x: Tensor, target: Tensor) -> Tensor:
        return deeplift(model, x, target, baseline=None, rule="reveal_cancel").sum(dim=1)

    return _chunked(reveal_cancel, images[image_index], classes, internal_batch_size)


def _ig(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *, layer: str | None = None,
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


def _input_x_gradient(model: nn.Module, images: Tensor, image_index: Tensor, classes: Tensor, *,
                      layer: str | None = None) -> Tensor:
    """captum ``InputXGradient``."""
    from captum.attr import InputXGradient

    _no_layer("input_x_gradient", layer)
    attr = InputXGradient(model).attribute(images[image_index].clone().requires_grad_(True), target=classes)
    return attr.detach().sum(dim=1)


register_layer_method("gradcam", _gradcam_combine, default_layer="conv5_3")
register_layer_method("swa", _swa_combine)
register_layer_method("ewa", _ewa_combine, needs_grad=False)
register_method("lrp", _lrp)
register_method("ebp", _ebp)
register_method("deeplift", _deeplift)
register_method("deeplift_rc", _deeplift_rc)
register_method("ig", _ig)
register_method("input_x_gradient", _input_x_gradient)
register_method("center", center_map)  # model-free baseline (attribution/baselines.py)
register_method("rap", rap_map)  # Relative Attributing Propagation (attribution/rap.py)

__all__ = [
    "METHODS", "MethodFn", "MethodSpec", "LayerRule", "LRP_COMPOSITES", "DEEPLIFT_BACKENDS", "attribute",
    "check_method", "eval_scope", "get_method", "method_knobs", "minmax", "predict_and_attribute",
    "register_layer_method", "register_method", "upsample",
]
