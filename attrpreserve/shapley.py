"""Deprecated: moved to :mod:`attrpreserve.pruning.shapley`.

Importing this module warns once (``DeprecationWarning``) and re-exports the old names;
``prunable_layers`` is now :func:`attrpreserve.pruning.shapley_layers` and ``batch_inputs``
:func:`attrpreserve.pruning.batch_images`.
"""

import warnings

from attrpreserve.pruning import shapley as _shapley
from attrpreserve.pruning.shapley import *  # noqa: F403
from attrpreserve.pruning.targets import batch_images

prunable_layers = shapley_layers  # noqa: F405
batch_inputs = batch_images

__all__ = sorted(set(_shapley.__all__) - {"shapley_layers"} | {"batch_inputs", "prunable_layers"})

warnings.warn("attrpreserve.shapley is deprecated: import from attrpreserve.pruning.shapley (or attrpreserve.pruning).",
              DeprecationWarning, stacklevel=2)
