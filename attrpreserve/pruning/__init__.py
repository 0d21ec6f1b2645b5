"""Pruning algorithms, below the Lightning callbacks (no Lightning import here).

- :mod:`~attrpreserve.pruning.targets`: which network (:func:`pruned_network`, never a teacher),
  which layers (:func:`prunable_layers`), which input (:func:`batch_images`).
- :mod:`~attrpreserve.pruning.masks`: the ``torch.nn.utils.prune`` reparametrisation (effective
  weights, fold, drop); torch only, so ``attrpreserve.models`` may use it.
- :mod:`~attrpreserve.pruning.surgery`: filter removal (Torch-Pruning), structure restored from a
  state dict before it loads, export.
- :mod:`~attrpreserve.pruning.complexity`: sparsity, parameter and FLOP (MAC) counts.
- :mod:`~attrpreserve.pruning.shapley`: Shapley link importance and pruning by it (SHAP-SAE).
"""

from attrpreserve.pruning.complexity import check_input_size, count_flops, count_parameters, sparsity
from attrpreserve.pruning.masks import (
    effective_tensor,
    fold_masks,
    folded_state_dict,
    is_masked,
    make_permanent,
    pruned_tensor_names,
)
from attrpreserve.pruning.shapley import (
    LinkImportance,
    ShapleyReport,
    ShapleyValues,
    importance_mask,
    link_importance,
    link_shapley,
    model_link_importance,
    prune_by_importance,
    resolve_layers,
    shapley_layers,
    shapley_prune,
    unit_importance,
)
from attrpreserve.pruning.surgery import (
    IMPORTANCES,
    channels_to_remove,
    check_rates,
    conv_layers,
    export_pruned,
    plan_removal,
    remove_channels,
    restore_structure,
)
from attrpreserve.pruning.targets import CONV_TYPES, PARAMETER_SETS, batch_images, prunable_layers, pruned_network

__all__ = [
    "CONV_TYPES", "IMPORTANCES", "PARAMETER_SETS", "LinkImportance", "ShapleyReport", "ShapleyValues", "batch_images",
    "channels_to_remove", "check_input_size", "check_rates", "conv_layers", "count_flops", "count_parameters",
    "effective_tensor", "export_pruned", "fold_masks", "folded_state_dict", "importance_mask", "is_masked",
    "link_importance", "link_shapley", "make_permanent", "model_link_importance", "plan_removal",
    "prunable_layers", "prune_by_importance", "pruned_network", "pruned_tensor_names", "remove_channels",
    "resolve_layers", "restore_structure", "shapley_layers", "shapley_prune", "sparsity", "unit_importance",
]
