"""Deprecated: moved to :mod:`attrpreserve.pruning.shapley`.

Importing this module warns once (``DeprecationWarning``) and re-exports the old names;
``prunable_layers`` is now :func:`attrpreserve.pruning.shapley_layers` and ``batch_inputs``
:func:`attrpreserve.pruning.batch_images`.
"""

import warnings

from attrpreserve.pruning.shapley import (
    BASELINES,
    OUTPUTS,
    LinkImportance,
    ShapleyReport,
    ShapleyValues,
    check_importance_level,
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
from attrpreserve.pruning.targets import batch_images

prunable_layers = shapley_layers
batch_inputs = batch_images

__all__ = ["BASELINES", "OUTPUTS", "LinkImportance", "ShapleyReport", "ShapleyValues", "batch_inputs",
           "check_importance_level", "importance_mask", "link_importance", "link_shapley", "model_link_importance",
           "prunable_layers", "prune_by_importance", "resolve_layers", "shapley_prune", "unit_importance"]

warnings.warn("attrpreserve.shapley is deprecated: import from attrpreserve.pruning.shapley (or attrpreserve.pruning).",
              DeprecationWarning, stacklevel=2)
