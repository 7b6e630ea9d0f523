"""Evaluation metrics, one small module per family, filed by name in :data:`METRICS`.

Every module holds pure numeric functions (a map and a box/mask → a number; or a map and a
``score_fn(batch_of_inputs) -> scores`` callable for the perturbation metrics). :mod:`onnxfix.evaluate.runner`
calls them per image. A :class:`MetricSpec` says what a family needs (ground truth, extra explanations, forward
passes) and which values it produces; the runner decides how to feed it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricSpec:
    """One metric family: ``name`` (what ``--metrics`` takes), the ``values`` it writes per image, and needs."""

    name: str
    values: tuple[str, ...]
    summary: str
    needs_region: bool = False  # a box or a mask
    needs_model: bool = False  # re-runs the model (perturbation / sanity metrics)
    lower_is_better: tuple[str, ...] = ()
    compute: Callable[[Any], dict[str, float | None]] | None = None  # self-computing: f(MetricContext) -> values


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec) -> MetricSpec:
    """File ``spec`` under its name."""
    METRICS[spec.name] = spec
    return spec


register_metric(MetricSpec("pointing", ("pointing",), "pointing game: the map's maximum inside the object",
                           needs_region=True))
register_metric(MetricSpec("pointing_top5", ("pointing_top5",),
                           "Grad-CAM's pointing game over the top-5 classes, with rejection of absent classes",
                           needs_region=True))
register_metric(MetricSpec("wsol", ("box_iou", "loc_gt_known", "loc_top1_error", "loc_top5_error"),
                           "weakly-supervised localisation: box from the map, correct at IoU >= 0.5",
                           needs_region=True, lower_is_better=("loc_top1_error", "loc_top5_error")))
register_metric(MetricSpec("mask", ("mask_iou", "mask_iou_auc", "relevance_mass", "roc_auc"),
                           "mask IoU at 50% of max, its area under the threshold curve, relevance mass, ROC AUC",
                           needs_region=True))
register_metric(MetricSpec("faithfulness", ("faithfulness",),
                           "Spearman rank correlation with an occlusion map at the model input's resolution",
                           needs_model=True))
register_metric(MetricSpec("confidence", ("avg_drop", "conf_increase", "avg_drop_box", "conf_increase_box"),
                           "average drop / increase in confidence keeping only the top-k% of the map or its box",
                           needs_model=True, lower_is_better=("avg_drop", "avg_drop_box")))
register_metric(MetricSpec("deletion", ("deletion_auc", "insertion_auc"),
                           "deletion / insertion AUC of the class probability (RISE)", needs_model=True,
                           lower_is_better=("deletion_auc",)))
register_metric(MetricSpec("sanity", ("class_sensitivity", "cascade_first", "cascade_half", "cascade_all"),
                           "Spearman of the map with the map for a random class / after cascading weight "
                           "randomisation (lower = more sensitive)", needs_model=True,
                           lower_is_better=("class_sensitivity", "cascade_first", "cascade_half", "cascade_all")))


def _peer_metrics() -> None:
    """The families pytorch-grad-cam and Quantus ship (issue #15); each computes itself from a MetricContext."""
    from onnxfix.evaluate.metrics import complexity, faithfulness_correlation, road, robustness

    register_metric(MetricSpec("road", ("road_morf", "road_lerf", "road_combined"),
                               "ROAD: score change after removing the most / least relevant pixels with noisy "
                               "linear imputation, averaged over 10-90% (pytorch-grad-cam)", needs_model=True,
                               lower_is_better=("road_morf",), compute=road.compute))
    register_metric(MetricSpec("faithfulness_corr", ("faithfulness_corr",),
                               "faithfulness correlation: Pearson of map sums and score drops over random subsets "
                               "(Quantus)", needs_model=True, compute=faithfulness_correlation.compute))
    register_metric(MetricSpec("complexity", ("sparseness", "complexity"),
                               "sparseness (Gini) and complexity (entropy) of the map (Quantus)",
                               lower_is_better=("complexity",), compute=complexity.compute))
    register_metric(MetricSpec("robustness", ("max_sensitivity",),
                               "max-sensitivity: largest relative change of the map under uniform input noise "
                               "(Quantus)", needs_model=True, lower_is_better=("max_sensitivity",),
                               compute=robustness.compute))


_peer_metrics()

__all__ = ["METRICS", "MetricSpec", "register_metric"]
