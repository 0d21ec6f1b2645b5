"""Deprecated: moved to :mod:`attrpreserve.pruning.complexity` (layers: :mod:`attrpreserve.pruning.targets`).

Importing this module warns once (``DeprecationWarning``) and re-exports the old names.
"""

import warnings

from attrpreserve.pruning.complexity import check_input_size, count_flops, count_parameters, sparsity
from attrpreserve.pruning.masks import effective_tensor
from attrpreserve.pruning.targets import CONV_TYPES, PARAMETER_SETS, prunable_layers

__all__ = ["CONV_TYPES", "PARAMETER_SETS", "check_input_size", "count_flops", "count_parameters", "effective_tensor",
           "prunable_layers", "sparsity"]

warnings.warn("attrpreserve.complexity is deprecated: import from attrpreserve.pruning.complexity "
              "(or attrpreserve.pruning).", DeprecationWarning, stacklevel=2)
