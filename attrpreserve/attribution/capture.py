"""Capture the outputs of named layers with forward hooks, scoped to a ``with`` block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from attrpreserve.models.layers import resolve_layer_name


@contextmanager
def capture_features(
    model: nn.Module, layers: Sequence[str], *, cut_graph: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named layer during forward passes inside the block.

    Args:
        model: the network; ``forward`` is left untouched (hooks only).
        layers: aliases (``"pool5"``) or dotted module names; keys of the yielded dict.
        cut_graph: replace the output of the first captured layer to run by
            ``output.detach().requires_grad_()``, so a gradient w.r.t. any captured feature map
            can be asked for while nothing before that layer is recorded by autograd (the frozen
            teacher's forward costs no graph up to it). Later captured layers stay in the graph.

    Yields:
        dict layer -> tensor, filled as the forward runs (the last call wins).

    Raises:
        ValueError: a layer name unknown to the model (the message lists the valid ones).

    Example:
        >>> from attrpreserve.models import vgg_small
        >>> net = vgg_small(num_classes=2).eval()
        >>> with capture_features(net, ["pool5"]) as feats:
        ...     _ = net(torch.zeros(1, 3, 64, 64))
        >>> tuple(feats["pool5"].shape)
        (1, 128, 8, 8)
    """
    names = {layer: resolve_layer_name(model, layer) for layer in layers}
    captured: dict[str, torch.Tensor] = {}
    handles = []
    state = {"cut": False}

    def reset(_module: nn.Module, _inputs: tuple) -> None:
        state["cut"] = False

    def make_hook(key: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor):
            if cut_graph and not state["cut"]:
                state["cut"] = True
                output = output.detach().requires_grad_(True)
                captured[key] = output
                return output
            captured[key] = output
            return None

        return hook

    try:
        handles.append(model.register_forward_pre_hook(reset))
        for key, name in names.items():
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(key)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
