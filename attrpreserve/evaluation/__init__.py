"""Evaluation: :class:`AttributionEvaluator` (every metric of an evaluation, fed batch by batch,
used by :func:`attrpreserve.evaluate.evaluate` and from a ``test_step``), the protocols, the
ground truth of the scored pairs (masks or boxes), per-pair records, bootstrap intervals,
per-class tables, the faithfulness (deletion/insertion) curves and the report I/O
(:mod:`attrpreserve.evaluation.report`: table, JSON/CSV, logger)."""

from attrpreserve.evaluation.bootstrap import bootstrap_ci
from attrpreserve.evaluation.evaluator import AttributionEvaluator, PairCounts
from attrpreserve.evaluation.pairs import PairTargets, ground_truth, pair_targets, present_classes
from attrpreserve.evaluation.per_class import per_class_rows, write_per_class
from attrpreserve.evaluation.protocol import PROTOCOLS, Protocol
from attrpreserve.evaluation.records import PairRecords, pair_values
from attrpreserve.evaluation.report import (
    format_table, load_results, log_results, log_summary, save_results, summary_values,
)

__all__ = [
    "PROTOCOLS", "AttributionEvaluator", "PairCounts", "PairRecords", "PairTargets", "Protocol", "bootstrap_ci",
    "format_table", "ground_truth", "load_results", "log_results", "log_summary", "pair_targets", "pair_values",
    "per_class_rows", "present_classes", "save_results", "summary_values", "write_per_class",
]
