"""Deprecated: moved to :mod:`attrpreserve.pruning.surgery` (masks: :mod:`attrpreserve.pruning.masks`).

Importing this module warns once (``DeprecationWarning``) and re-exports the old names.
"""

import warnings

from attrpreserve.pruning.masks import fold_masks, folded_state_dict, is_masked, make_permanent, pruned_tensor_names
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

__all__ = ["IMPORTANCES", "channels_to_remove", "check_rates", "conv_layers", "export_pruned", "fold_masks",
           "folded_state_dict", "is_masked", "make_permanent", "plan_removal", "pruned_tensor_names",
           "remove_channels", "restore_structure"]

warnings.warn("attrpreserve.surgery is deprecated: import from attrpreserve.pruning.surgery (or attrpreserve.pruning).",
              DeprecationWarning, stacklevel=2)
