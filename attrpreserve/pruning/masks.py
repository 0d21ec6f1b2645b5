"""Pruning masks: read, fold and drop the ``torch.nn.utils.prune`` reparametrisation.

A masked layer holds ``X_orig`` (parameter) and ``X_mask`` (buffer) and computes with
``X = X_orig * X_mask``, refreshed by a forward pre-hook. Everything here reads the pair
directly, so it is right even before the next forward. This module imports only torch:
``attrpreserve.models`` (a lower layer) folds masks of checkpoints with :func:`fold_masks`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import prune


def pruned_tensor_names(layer: nn.Module) -> list[str]:
    """Names of ``layer``'s own tensors that carry a prune reparametrisation (``X_orig`` + ``X_mask``).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> _ = prune.identity(layer, "weight")
        >>> pruned_tensor_names(layer)
        ['weight']
    """
    names = []
    for name, _ in layer.named_parameters(recurse=False):
        if name.endswith("_orig") and isinstance(getattr(layer, name[: -len("_orig")] + "_mask", None), Tensor):
            names.append(name[: -len("_orig")])
    return names


def is_masked(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries a prune reparametrisation.

    Example:
        >>> is_masked(nn.Conv2d(1, 1, 1))
        False
    """
    return any(pruned_tensor_names(m) for m in model.modules())


def effective_tensor(module: nn.Module, name: str) -> Tensor:
    """The tensor ``name`` of ``module`` as the forward sees it (``orig * mask`` when pruned), detached.

    Args:
        module: a layer.
        name: a parameter name such as ``"weight"``.

    Example:
        >>> import torch
        >>> layer = nn.Linear(2, 2)
        >>> _ = prune.custom_from_mask(layer, "weight", torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> int((effective_tensor(layer, "weight") == 0).sum())
        1
    """
    orig, mask = getattr(module, f"{name}_orig", None), getattr(module, f"{name}_mask", None)
    if isinstance(orig, Tensor) and isinstance(mask, Tensor):
        return orig.detach() * mask
    return getattr(module, name).detach()


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into a plain weight (``prune.remove``), in place.

    Afterwards ``weight`` is an ordinary parameter holding zeros where the mask was zero, and
    the state dict has plain keys (``weight``) that load into any network of the same shapes.

    Returns:
        ``model``.

    Example:
        >>> layer = nn.Linear(3, 1)
        >>> _ = prune.l1_unstructured(layer, "weight", amount=2)
        >>> sorted(make_permanent(layer).state_dict()), int((layer.weight == 0).sum())
        (['bias', 'weight'], 2)
    """
    for layer in model.modules():
        for tensor in pruned_tensor_names(layer):
            prune.remove(layer, tensor)
    return model


def fold_masks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with every ``X_orig``/``X_mask`` pair replaced by ``X = orig * mask``
    (detached CPU copies); other entries copied as they are.

    Example:
        >>> import torch
        >>> fold_masks({"w_orig": torch.ones(2), "w_mask": torch.tensor([0.0, 1.0])})
        {'w': tensor([0., 1.])}
    """
    folded: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            folded[base] = (value * state[f"{base}_mask"]).detach().cpu().clone()
        else:
            folded[key] = value.detach().cpu().clone()
    return folded


def folded_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s state dict with every ``X_orig``/``X_mask`` pair replaced by ``X = orig * mask``,
    detached copies on the CPU; ``model`` is not changed (a deep copy of a masked network fails
    in PyTorch, so the fold is done on the state dict).

    Example:
        >>> import torch
        >>> layer = nn.Linear(3, 1)
        >>> _ = prune.l1_unstructured(layer, "weight", amount=1)
        >>> state = folded_state_dict(layer)
        >>> sorted(state), torch.equal(state["weight"], layer.weight_orig.detach() * layer.weight_mask)
        (['bias', 'weight'], True)
    """
    return fold_masks(model.state_dict())


__all__ = ["effective_tensor", "fold_masks", "folded_state_dict", "is_masked", "make_permanent", "pruned_tensor_names"]
