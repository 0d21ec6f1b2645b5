"""Lightning callbacks: attribution matching, pruning schedules, attribution panels, localisation scores."""

from attrpreserve.callbacks.matching import AttributionMatching, MatchingTerm
from attrpreserve.callbacks.localization import LocalizationMonitor
from attrpreserve.callbacks.panels import AttributionPanels
from attrpreserve.callbacks.pruning import StructuredPruning, UnstructuredPruning
from attrpreserve.callbacks.shapley_pruning import ShapleyPruning

__all__ = ["AttributionMatching", "AttributionPanels", "LocalizationMonitor", "MatchingTerm", "ShapleyPruning", "StructuredPruning", "UnstructuredPruning"]
