"""Lightning callbacks: attribution matching, pruning schedules, attribution panels."""

from attrpreserve.callbacks.matching import AttributionMatching, MatchingTerm
from attrpreserve.callbacks.pruning import StructuredPruning, UnstructuredPruning

__all__ = ["AttributionMatching", "MatchingTerm", "StructuredPruning", "UnstructuredPruning"]
