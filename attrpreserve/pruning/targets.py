"""What pruning acts on: the network of a (Lightning) module, its prunable layers, a batch's images.

Every pruning callback resolves its network with :func:`pruned_network` and its example input
with :func:`batch_images`, so all of them agree on which network they change (never a teacher)
and on what a batch looks like. Duck-typed: no Lightning import.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

PARAMETER_SETS = ("conv", "conv+linear")
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def pruned_network(pl_module: nn.Module) -> nn.Module:
    """The network a pruning callback acts on: ``pl_module.student`` (a DistillationModule),
    else ``pl_module.model`` (a TeacherModule), else ``pl_module`` itself. Never the teacher.

    Args:
        pl_module: the LightningModule (any ``nn.Module``).

    Raises:
        ValueError: the module has a ``teacher`` but neither ``student`` nor ``model``: pruning
            the module itself would prune the teacher.

    Example:
        >>> holder = nn.Module()
        >>> holder.teacher, holder.student = nn.Linear(2, 2), nn.Linear(2, 1)
        >>> pruned_network(holder) is holder.student
        True
        >>> net = nn.Sequential(nn.Linear(2, 1))
        >>> pruned_network(net) is net
        True
    """
    for attr in ("student", "model"):
        net = getattr(pl_module, attr, None)
        if isinstance(net, nn.Module):
            return net
    if isinstance(getattr(pl_module, "teacher", None), nn.Module):
        raise ValueError(
            f"Expected the module to hold the network to prune as `student` (DistillationModule) or `model` "
            f"(TeacherModule), but {type(pl_module).__name__} has only a `teacher`, which is never pruned."
        )
    return pl_module


def batch_images(batch: Any) -> Tensor:
    """The image (input) tensor of a batch: the batch itself, ``batch["image"]`` or ``batch[0]``.

    Raises:
        ValueError: none of those is a tensor.

    Example:
        >>> import torch
        >>> batch_images({"image": torch.zeros(2, 3, 8, 8), "labels": torch.ones(2)}).shape
        torch.Size([2, 3, 8, 8])
        >>> batch_images((torch.zeros(4, 5), torch.ones(4))).shape
        torch.Size([4, 5])
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping) and isinstance(batch.get("image"), Tensor):
        return batch["image"]
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise ValueError(
        f"Expected a batch to be a tensor, a dict with key 'image' or a tuple (x, ...), but got {type(batch).__name__}."
    )


def prunable_layers(module: nn.Module, parameters: str = "conv") -> list[tuple[str, nn.Module]]:
    """``(dotted name, layer)`` of the layers whose weights magnitude pruning acts on, in module order.

    Args:
        module: the network.
        parameters: ``"conv"`` (convolutions, the paper) or ``"conv+linear"``.

    Raises:
        ValueError: unknown ``parameters``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
        >>> [name for name, _ in prunable_layers(net, "conv+linear")]
        ['0', '3']
    """
    if parameters not in PARAMETER_SETS:
        raise ValueError(f"Expected argument `parameters` to be one of {PARAMETER_SETS}, but got {parameters!r}.")
    types = CONV_TYPES + ((nn.Linear,) if parameters == "conv+linear" else ())
    return [(name, m) for name, m in module.named_modules() if isinstance(m, types)]


__all__ = ["CONV_TYPES", "PARAMETER_SETS", "batch_images", "prunable_layers", "pruned_network"]
