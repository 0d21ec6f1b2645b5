"""Evaluation pieces used by :func:`attrpreserve.evaluate.evaluate`: the ground truth of the
scored pairs (masks or boxes), per-pair records, bootstrap intervals, per-class tables and the
faithfulness (deletion/insertion) curves."""

from attrpreserve.evaluation.bootstrap import bootstrap_ci
from attrpreserve.evaluation.pairs import PairTargets, ground_truth, pair_targets, present_classes
from attrpreserve.evaluation.per_class import per_class_rows, write_per_class
from attrpreserve.evaluation.records import PairRecords, pair_values

__all__ = [
    "PairRecords", "PairTargets", "bootstrap_ci", "ground_truth", "pair_targets", "pair_values", "per_class_rows",
    "present_classes", "write_per_class",
]
