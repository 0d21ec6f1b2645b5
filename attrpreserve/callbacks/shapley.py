"""Deprecated: moved to :mod:`attrpreserve.callbacks.shapley_pruning` (``attrpreserve.callbacks`` exports it).

Importing this module warns once (``DeprecationWarning``) and re-exports ``ShapleyPruning``.
"""

import warnings

from attrpreserve.callbacks.shapley_pruning import ShapleyPruning

__all__ = ["ShapleyPruning"]

warnings.warn("attrpreserve.callbacks.shapley is deprecated: import ShapleyPruning from attrpreserve.callbacks "
              "(module attrpreserve.callbacks.shapley_pruning).", DeprecationWarning, stacklevel=2)
