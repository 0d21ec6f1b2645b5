"""attrpreserve: compress CNNs (distillation, pruning) while preserving their attribution maps.

Park, Yang, Hwang, Yang, "Attribution Preservation in Network Compression for Reliable Network
Interpretation", NeurIPS 2020.
"""

from attrpreserve.callbacks import (
    AttributionMatching,
    AttributionPanels,
    LocalizationMonitor,
    StructuredPruning,
    UnstructuredPruning,
)
from attrpreserve.data import SyntheticDataModule, VOCDataModule
from attrpreserve.evaluate import evaluate
from attrpreserve.modules import DistillationModule, TeacherModule, load_module, load_network
from attrpreserve.teacher_cache import TeacherCache

__version__ = "0.1.0"

__all__ = [
    "AttributionMatching", "AttributionPanels", "DistillationModule", "LocalizationMonitor", "StructuredPruning",
    "SyntheticDataModule", "TeacherCache", "TeacherModule", "UnstructuredPruning", "VOCDataModule", "evaluate",
    "load_module", "load_network",
]
