"""Mask and channel surgery: remove conv filters, restore a pruned structure (masks, removed
channels) from a state dict before it loads, export a pruned network for deployment.

Two kinds of pruned networks exist here:

- **masked** (unstructured pruning): ``torch.nn.utils.prune`` reparametrises a layer's ``weight``
  as ``weight_orig * weight_mask``; the state dict holds ``weight_orig`` and ``weight_mask``.
- **thinned** (structured pruning): whole conv filters were removed with Torch-Pruning; the
  state dict holds smaller conv, BatchNorm and linear tensors.

A freshly built network has neither, so loading such a state dict needs
:func:`restore_structure` first (``DistillationModule.on_load_checkpoint`` calls it). Reading and
folding masks is :mod:`attrpreserve.pruning.masks`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from attrpreserve.pruning.masks import folded_state_dict, is_masked, pruned_tensor_names
from attrpreserve.pruning.targets import CONV_TYPES, prunable_layers

IMPORTANCES = ("l1", "l2")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(dotted name, conv)`` for every convolution of ``model``, in module order (what ``rates`` index).

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> [name for name, _ in conv_layers(vgg_small())]
        ['features.0', 'features.4', 'features.8', 'features.11']
    """
    return prunable_layers(model, "conv")


def channels_to_remove(channels: int, rate: float) -> int:
    """Filters a ``rate`` removes from a layer of ``channels``: ``rate * channels`` rounded half up.

    Example:
        >>> channels_to_remove(64, 0.3), channels_to_remove(4, 0.5), channels_to_remove(512, 0.0)
        (19, 2, 0)
    """
    return int(math.floor(rate * channels + 0.5))


def check_rates(rates: float | Sequence[float], argument: str = "rates") -> list[float] | float:
    """Validate a rate or a list of rates (each in [0, 1)) and return it as float(s).

    Raises:
        ValueError: a rate outside [0, 1), not a number, or an empty list.

    Example:
        >>> check_rates([0.3, 0, 0.5])
        [0.3, 0.0, 0.5]
    """
    def one(rate: object) -> float:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"Expected argument `{argument}` to hold rates in [0, 1), but got {rates!r}.")
        return float(rate)

    if isinstance(rates, Sequence) and not isinstance(rates, str):
        if len(rates) == 0:
            raise ValueError(f"Expected argument `{argument}` to be a rate or a non-empty list of rates, but got [].")
        return [one(r) for r in rates]
    return one(rates)


def plan_removal(
    model: nn.Module, rates: float | Sequence[float], argument: str = "rates"
) -> list[tuple[str, nn.Module, int]]:
    """``(name, conv, filters to remove)`` per conv layer, checked against the model.

    Raises:
        ValueError: ``model`` has no conv layer, ``rates`` is a list whose length differs from
            the number of conv layers, or a rate would remove every filter of a layer.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> [n for _, _, n in plan_removal(vgg_small(width_divisor=8), [0.5, 0, 0, 0.3])]
        [2, 0, 0, 5]
    """
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"Expected argument `model` to contain conv layers, but {type(model).__name__} has none.")
    checked = check_rates(rates, argument)
    if isinstance(checked, list):
        if len(checked) != len(convs):
            raise ValueError(
                f"Expected argument `{argument}` to hold one rate per conv layer ({len(convs)}: "
                f"{[name for name, _ in convs]}), but got {len(checked)} rates: {list(rates)!r}."
            )
        per_layer = checked
    else:
        per_layer = [checked] * len(convs)
    plan = []
    for (name, conv), rate in zip(convs, per_layer):
        n = channels_to_remove(conv.out_channels, rate)
        if n >= conv.out_channels:
            raise ValueError(
                f"Expected argument `{argument}` to leave at least one filter in every conv layer, but rate {rate} "
                f"removes all {conv.out_channels} filters of {name!r}."
            )
        plan.append((name, conv, n))
    return plan


def remove_channels(
    model: nn.Module,
    rates: float | Sequence[float],
    importance: str = "l1",
    example_input: Tensor | None = None,
) -> dict[str, list[int]]:
    """Physically remove the lowest-norm filters of every conv layer, in place (Torch-Pruning).

    Each conv's filters are ranked by the norm of their weights (``"l1"``: the paper's L1 norm,
    ``"l2"``), all ranks taken on the network as given (one shot), then removed together with
    every coupled slice: the BatchNorm channels after the conv, the next conv's input channels
    and, after the last conv, the first linear layer's input columns of those channels (the
    ``C*s*s`` flattened columns of channel c are ``c*s*s ... (c+1)*s*s - 1``; Torch-Pruning maps
    them through the flatten). Parameters are new tensors afterwards: rebuild any optimiser.

    Args:
        model: the network (plain weights; fold masks with :func:`make_permanent` first).
        rates: one fraction in [0, 1) for all conv layers, or one per conv layer in module order
            (paper, VGG16: ``[p, 0, 0, 0, 0, 0, 0, p, p, p, p, p, p]``). A layer loses
            ``round(rate * channels)`` filters.
        importance: ``"l1"`` or ``"l2"``.
        example_input: one input batch ``[N, C, H, W]`` to trace the network with (default
            ``zeros(1, 3, 64, 64)``). The network runs once in eval mode, BatchNorm statistics
            untouched.

    Returns:
        conv layer name -> sorted indices (in the layer as given) of the removed filters.

    Raises:
        ValueError: unknown ``importance``; bad ``rates`` (see :func:`plan_removal`); the model
            carries pruning masks; ``example_input`` is not a tensor.

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> net = vgg_small(num_classes=3, width_divisor=8)
        >>> removed = remove_channels(net, [0.5, 0, 0, 0.25], example_input=torch.zeros(1, 3, 32, 32))
        >>> [len(v) for v in removed.values()], net.features[0].out_channels, net.classifier[1].in_features
        ([2, 0, 0, 4], 2, 768)
    """
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise ValueError(f"Expected argument `importance` to be one of {IMPORTANCES}, but got {importance!r}.")
    if is_masked(model):
        raise ValueError(
            "Expected argument `model` without pruning masks (weight_orig/weight_mask); fold them first with "
            "attrpreserve.pruning.make_permanent(model)."
        )
    if example_input is None:
        example_input = torch.zeros(1, 3, 64, 64)
    if not isinstance(example_input, Tensor):
        raise ValueError(f"Expected argument `example_input` to be a tensor, but got {type(example_input).__name__}.")
    plan = plan_removal(model, rates)
    first = next(iter(model.parameters()))
    example = example_input.detach().to(device=first.device, dtype=first.dtype)

    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # tracing runs a forward: keep BatchNorm statistics as they are
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        # The filter norm of the root conv alone (the paper), not a group average.
        scorer = tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2, group_reduction="first",
                                                   normalizer=None)
        removed: dict[str, list[int]] = {}
        for name, conv, n in plan:
            if n == 0:
                removed[name] = []
                continue
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
            scores = scorer(group)
            removed[name] = sorted(torch.argsort(scores, stable=True)[:n].tolist())
        for name, conv, _ in plan:
            if removed[name]:
                graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=removed[name]).prune()
    finally:
        for m, mode in modes.items():
            m.training = mode
    return removed


def _target_shape(local: dict[str, Tensor], name: str) -> torch.Size | None:
    tensor = local.get(name, local.get(f"{name}_orig"))
    return tensor.shape if isinstance(tensor, Tensor) else None


def _resize_tensor(layer: nn.Module, name: str, shape: torch.Size) -> None:
    old = getattr(layer, name)
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)  # values come from the state dict
    if isinstance(old, nn.Parameter):
        setattr(layer, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(layer, name, new)


def _reshape(layer: nn.Module, local: dict[str, Tensor]) -> None:
    if not isinstance(layer, CONV_TYPES + (nn.Linear,) + _NORMS):
        return
    tensors = [n for n, _ in layer.named_parameters(recurse=False)] + [
        n for n, b in layer.named_buffers(recurse=False) if b is not None and not n.endswith("_mask")
    ]
    wrong = {}
    for name in tensors:
        shape = _target_shape(local, name)
        if shape is not None and shape != getattr(layer, name).shape:
            wrong[name] = shape
    if not wrong:
        return
    for name in pruned_tensor_names(layer):  # reshape the plain tensor, re-mask below
        prune.remove(layer, name)
    for name, shape in wrong.items():
        _resize_tensor(layer, name, shape)
    weight = layer.weight
    if isinstance(layer, CONV_TYPES):
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
        layer.out_channels = weight.shape[0]
        if depthwise:
            layer.groups = layer.in_channels = weight.shape[0]
        else:
            layer.in_channels = weight.shape[1] * layer.groups
    elif isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape
    else:
        layer.num_features = weight.shape[0]


def restore_structure(model: nn.Module, state_dict: dict[str, Tensor], prefix: str = "") -> nn.Module:
    """Give ``model`` the structure ``state_dict`` was saved from, so that it loads (in place).

    For every layer, in this order: a prune reparametrisation the state dict does not have is
    folded away (``prune.remove``); conv, linear and BatchNorm tensors whose shapes differ are
    replaced by zero tensors of the saved shapes (removed channels; ``in_channels``,
    ``out_channels``, ``in_features``, ``out_features``, ``num_features`` follow); every
    ``X_orig``/``X_mask`` pair of the state dict gets a reparametrisation
    (``prune.identity``, mask loaded afterwards). Values are not loaded: call
    ``load_state_dict`` next. A model that already has the saved structure is left as it is.

    Args:
        model: a freshly built (or partly restored) network.
        state_dict: the saved state dict (a Lightning checkpoint's ``"state_dict"``).
        prefix: key prefix of ``model`` inside ``state_dict`` (``"student."`` for a
            DistillationModule's student); other keys are ignored.

    Returns:
        ``model``.

    Example:
        >>> saved = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))  # 2 of 4 filters left
        >>> _ = prune.l1_unstructured(saved[0], "weight", amount=10)  # and masked
        >>> fresh = restore_structure(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), saved.state_dict())
        >>> fresh.load_state_dict(saved.state_dict())
        <All keys matched successfully>
        >>> fresh[0].out_channels, fresh[1].num_features, sorted(fresh[0].state_dict())
        (2, 2, ['bias', 'weight_mask', 'weight_orig'])
    """
    own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    for name, layer in model.named_modules():
        start = f"{name}." if name else ""
        local = {k[len(start):]: v for k, v in own.items() if k.startswith(start) and "." not in k[len(start):]}
        if not local:
            continue
        saved_pruned = {k[: -len("_orig")] for k in local if k.endswith("_orig")}
        saved_pruned = {t for t in saved_pruned if f"{t}_mask" in local}
        for tensor in pruned_tensor_names(layer):
            if tensor not in saved_pruned:
                prune.remove(layer, tensor)
        _reshape(layer, local)
        for tensor in sorted(saved_pruned - set(pruned_tensor_names(layer))):
            if isinstance(getattr(layer, tensor, None), nn.Parameter):
                prune.identity(layer, tensor)
    return model


def export_pruned(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save a deployable copy of ``model``'s weights: masks folded, tensors on the CPU.

    ``model`` itself is not changed (see :func:`folded_state_dict`). The file is a plain state dict: load it
    into a freshly built network with ``restore_structure(net, state)`` (removed channels)
    followed by ``net.load_state_dict(state)``.

    Args:
        model: the (pruned) network.
        path: file to write; missing parent folders are created.

    Returns:
        the path written.

    Example:
        >>> import tempfile
        >>> layer = nn.Linear(3, 1)
        >>> _ = prune.l1_unstructured(layer, "weight", amount=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     state = torch.load(export_pruned(layer, Path(d) / "net.pt"))
        >>> sorted(state), int((state["weight"] == 0).sum()), is_masked(layer)
        (['bias', 'weight'], 2, True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(folded_state_dict(model), path)
    return path


__all__ = ["IMPORTANCES", "channels_to_remove", "check_rates", "conv_layers", "export_pruned", "plan_removal",
           "remove_channels", "restore_structure"]
