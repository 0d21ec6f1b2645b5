"""Metrics of attribution quality and prediction, as torchmetrics ``Metric`` objects.

Localisation against masks: ``PointingGame``, ``TorchRayPointingGame`` (TorchRay's exact rule),
``EnergyPointingGame``, ``MaskAUROC``; agreement with the teacher:
``MapSimilarity``; prediction: ``PerImageAveragePrecision`` and ``classification_metrics``
(per-class mAP, per-image mAP, F1). The functional forms (``pointing_game``, ``mask_auroc``,
``map_similarity``, ``per_image_average_precision``) live in ``attrpreserve.metrics.functional``,
as in torchmetrics, and share one heatmap/mask validation (``functional/_checks.py``). Every
class has torchmetrics' ``plot()`` (``metric.plot()`` or ``metric.plot([values...])`` returns
``(figure, axes)``; scores in [0, 1] are drawn between those bounds).
"""

from attrpreserve.metrics.energy_pointing import EnergyPointingGame
from attrpreserve.metrics.map_similarity import MapSimilarity
from attrpreserve.metrics.mask_auroc import MaskAUROC
from attrpreserve.metrics.pointing_game import PointingGame
from attrpreserve.metrics.predictive import PerImageAveragePrecision, classification_metrics
from attrpreserve.metrics.torchray_pointing import TorchRayPointingGame

__all__ = [
    "EnergyPointingGame", "MapSimilarity", "MaskAUROC", "PerImageAveragePrecision", "PointingGame",
    "TorchRayPointingGame", "classification_metrics",
]
