"""Segmentation metrics: ``dice``, ``iou``, ``detection``, ``size-distribution``.

Each factory returns ``metric(prediction, truth) -> dict[str, float]``. Inputs
are :class:`emcopilot.Instances`, integer label images, particle tables or
:class:`emcopilot.analysis.matching.Objects` (boxes / points); the matching itself lives
in :mod:`emcopilot.analysis.matching`, shared with ``emcopilot evaluate``.
"""
from __future__ import annotations

from typing import Any

from emcopilot import Param, hookimpl


def _dice(params: dict, sample: Any):
    from emcopilot.analysis.matching import dice_iou

    def dice(prediction: Any, truth: Any) -> dict[str, float]:
        return {"dice": dice_iou(prediction, truth)["dice"]}
    return dice


def _iou(params: dict, sample: Any):
    from emcopilot.analysis.matching import dice_iou

    def iou(prediction: Any, truth: Any) -> dict[str, float]:
        return {"iou": dice_iou(prediction, truth)["iou"]}
    return iou


def _detection(params: dict, sample: Any):
    from emcopilot.analysis.matching import match

    def detection(prediction: Any, truth: Any) -> dict[str, float]:
        matching = match(prediction, truth, iou_threshold=params["iou_threshold"],
                         radius_px=params["radius_px"], radius_nm=params["radius_nm"])
        scores = matching.summary()
        if len(matching.scores):
            key = "mean_matched_distance_px" if matching.kind == "points" else "mean_matched_iou"
            scores[key] = float(matching.scores.mean())
        return scores
    return detection


def _size_distribution(params: dict, sample: Any):
    from emcopilot.core.errors import InputError
    from emcopilot.analysis.matching import diameters_of, size_distribution

    def size_distribution_metric(prediction: Any, truth: Any) -> dict[str, float]:
        predicted, predicted_unit = diameters_of(prediction, "prediction", prefer_nm=params["prefer_nm"])
        true, true_unit = diameters_of(truth, "truth", prefer_nm=params["prefer_nm"])
        if "given" not in (predicted_unit, true_unit) and predicted_unit != true_unit:
            raise InputError(f"prediction diameters are in {predicted_unit} but truth diameters in {true_unit}; "
                             "give both a pixel size or set prefer_nm: false")
        return size_distribution(predicted, true)
    return size_distribution_metric


@hookimpl
def register_metrics(register):
    register("dice", _dice, description="foreground Dice coefficient of two label images or masks")
    register("iou", _iou, description="foreground intersection over union of two label images or masks")
    register(
        "detection", _detection,
        params={
            "iou_threshold": Param(0.5, float, min=0.0, max=1.0,
                                   help="least IoU of a matched mask or box pair"),
            "radius_px": Param(3.0, float, min=0.0, unit="px",
                               help="largest centre distance of a matched point pair"),
            "radius_nm": Param(None, float, min=0.0, unit="nm",
                               help="the same in nm (overrides radius_px; needs a pixel size)"),
        },
        description="precision, recall and F1 with optimal one-to-one matching "
                    "(IoU for masks/boxes, distance for points)")
    register(
        "size-distribution", _size_distribution,
        params={"prefer_nm": Param(True, bool, help="compare diameters in nm when both sides know the pixel size")},
        description="mean/median diameter relative error, KS statistic and Wasserstein distance / true mean")
