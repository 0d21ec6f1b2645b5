"""Functional forms of the metrics: one call on one batch, no state.

Each module holds private ``_x_arg_validation``, ``_x_tensor_validation``, ``_x_update`` and
``_x_compute`` helpers (shared with the ``Metric`` classes) and the public function. Checks and
formatting common to all (heatmap/mask/ignore validation, ``(N, 1, H, W)`` -> ``(N, H, W)``, one
zero-division policy) live once, in ``_checks.py``.
"""

from attrpreserve.metrics.functional.energy_pointing import energy_pointing_game
from attrpreserve.metrics.functional.map_similarity import map_similarity
from attrpreserve.metrics.functional.mask_auroc import mask_auroc
from attrpreserve.metrics.functional.per_image_ap import per_image_average_precision
from attrpreserve.metrics.functional.pointing_game import pointing_game
from attrpreserve.metrics.functional.torchray_pointing import torchray_pointing_game

__all__ = [
    "energy_pointing_game", "map_similarity", "mask_auroc", "per_image_average_precision", "pointing_game",
    "torchray_pointing_game",
]
