"""Lightning callbacks: attribution matching, pruning schedules, attribution panels."""

from attrpreserve.callbacks.matching import AttributionMatching, MatchingTerm

__all__ = ["AttributionMatching", "MatchingTerm"]
