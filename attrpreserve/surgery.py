"""Deprecated: moved to :mod:`attrpreserve.pruning.surgery` (masks: :mod:`attrpreserve.pruning.masks`).

Importing this module warns once (``DeprecationWarning``) and re-exports the old names.
"""

import warnings

from attrpreserve.pruning import masks as _masks, surgery as _surgery
from attrpreserve.pruning.masks import *  # noqa: F403  (the old names, now split over two modules)
from attrpreserve.pruning.surgery import *  # noqa: F403

__all__ = sorted(set(_surgery.__all__) | set(_masks.__all__) - {"effective_tensor"})

warnings.warn("attrpreserve.surgery is deprecated: import from attrpreserve.pruning.surgery (or attrpreserve.pruning).",
              DeprecationWarning, stacklevel=2)
