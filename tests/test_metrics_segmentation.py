"""Segmentation metrics: dice, iou, detection (labels, boxes, points), size-distribution."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emcopilot import Instances
from emcopilot.core.errors import InputError
from emcopilot.analysis.evaluate import Objects, box_iou, match
from emcopilot.core.plugins import get_registry


def metric(name, **params):
    return get_registry().get("metric", name).create(params)


def _disks(centres, radius=4, shape=(64, 64)):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for index, (row, col) in enumerate(centres, 1):
        labels[(rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2] = index
    return labels


CENTRES = [(10, 10), (10, 40), (40, 20), (50, 50)]


def test_dice_and_iou_of_known_masks():
    truth = np.zeros((10, 10), np.int32)
    truth[:, :4] = 1  # 40 px
    pred = np.zeros((10, 10), np.int32)
    pred[:, 2:6] = 7  # 40 px, 20 overlapping
    assert metric("dice")(pred, truth) == {"dice": pytest.approx(0.5)}
    assert metric("iou")(pred, truth) == {"iou": pytest.approx(20 / 60)}
    assert metric("dice")(Instances(labels=truth), truth)["dice"] == 1.0


def test_detection_of_label_images_identical_shifted_and_relabelled():
    truth = _disks(CENTRES)
    detection = metric("detection")
    assert detection(truth, truth)["f1"] == 1.0
    relabelled = np.where(truth > 0, 10 - truth, 0)  # ids need not agree
    assert detection(Instances(labels=relabelled), truth)["f1"] == 1.0
    assert detection(np.roll(truth, 6, axis=1), truth)["f1"] == 0.0  # IoU of a 4-px disk shifted 6 px is 0
    one_missing = np.where(truth == 2, 0, truth)
    scores = detection(one_missing, truth)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (3, 0, 1)
    assert scores["recall"] == pytest.approx(0.75) and scores["precision"] == 1.0


def test_iou_threshold_decides_a_half_overlap():
    truth = np.zeros((20, 20), np.int32)
    truth[0:10, 0:10] = 1
    pred = np.zeros_like(truth)
    pred[0:10, 3:13] = 1  # IoU = 70 / 130
    assert metric("detection")(pred, truth)["f1"] == 1.0
    assert metric("detection", iou_threshold=0.6)(pred, truth)["f1"] == 0.0


def test_point_matching_is_optimal_not_greedy():
    truth = Instances(points=[[0.0, 0.0], [0.0, 2.0]])
    pred = Instances(points=[[0.0, 1.9], [0.0, 3.5]])
    # greedy nearest-first takes (1.9 -> 2.0) and leaves 3.5 without a partner
    scores = metric("detection", radius_px=2.0)(pred, truth)
    assert scores["tp"] == 2 and scores["f1"] == 1.0
    assert metric("detection", radius_px=1.0)(pred, truth)["tp"] == 1


def test_point_matching_is_one_to_one_and_handles_coincident_points():
    truth = Instances(points=[[5.0, 5.0]])
    pred = Instances(points=[[5.0, 5.0], [5.0, 5.0], [5.5, 5.0]])
    scores = metric("detection", radius_px=3.0)(pred, truth)
    assert (scores["tp"], scores["fp"], scores["fn"]) == (1, 2, 0)
    assert scores["mean_matched_distance_px"] == 0.0


def test_radius_nm_needs_a_pixel_size():
    points = Instances(points=[[1.0, 1.0]])
    with pytest.raises(InputError, match="radius_nm=0.1 needs the pixel size"):
        metric("detection", radius_nm=0.1)(points, points)
    calibrated = Instances(points=[[1.0, 1.0]], metadata={"pixel_size_nm": 0.05})
    shifted = Instances(points=[[1.0, 2.5]], metadata={"pixel_size_nm": 0.05})
    assert metric("detection", radius_nm=0.1)(shifted, calibrated)["f1"] == 1.0  # 1.5 px <= 2 px
    assert metric("detection", radius_nm=0.05)(shifted, calibrated)["f1"] == 0.0


def test_labels_against_points_compare_centroids():
    labels = _disks(CENTRES)
    points = Instances(points=np.array(CENTRES, float) + 0.5)
    assert metric("detection", radius_px=1.0)(labels, points)["f1"] == 1.0


def test_boxes_iou_and_matching():
    a = np.array([[0, 0, 10, 10]], float)
    assert box_iou(a, np.array([[5, 0, 15, 10]], float))[0, 0] == pytest.approx(50 / 150)
    truth = Objects("boxes", boxes=np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float))
    pred = Objects("boxes", boxes=np.array([[1, 0, 11, 10], [40, 40, 50, 50]], float))
    result = match(pred, truth)
    assert result.tp == 1 and result.fp == 1 and result.fn == 1
    assert metric("detection")(_disks([(25, 25)], radius=5, shape=(40, 40)), truth)["tp"] == 1


def test_empty_sides():
    empty = np.zeros((8, 8), np.int32)
    assert metric("detection")(empty, empty)["f1"] == 1.0
    truth = _disks([(4, 4)], radius=2, shape=(8, 8))
    scores = metric("detection")(empty, truth)
    assert scores["f1"] == 0.0 and scores["recall"] == 0.0


def test_unsupported_input_is_named():
    with pytest.raises(InputError, match="wrap points as"):
        metric("detection")(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(InputError, match="differ in shape"):
        match(np.zeros((4, 4), int), np.zeros((5, 5), int))


def test_size_distribution_scaled_diameters():
    rng = np.random.default_rng(0)
    true = rng.normal(5.0, 1.0, 400).clip(1)
    stats = metric("size-distribution")(true * 1.1, true)
    assert stats["mean_diameter_rel_error"] == pytest.approx(0.1)
    assert stats["median_diameter_rel_error"] == pytest.approx(0.1)
    assert stats["wasserstein_rel"] == pytest.approx(0.1)
    assert 0.05 < stats["ks_statistic"] < 0.5
    same = metric("size-distribution")(true, true)
    assert same["ks_statistic"] == 0.0 and same["wasserstein_rel"] == 0.0


def test_size_distribution_from_tables_and_label_images():
    table = pd.DataFrame({"eq_diameter_px": [4.0, 6.0], "eq_diameter_nm": [0.4, 0.6]})
    truth = pd.DataFrame({"eq_diameter_px": [5.0, 5.0], "eq_diameter_nm": [0.5, 0.5]})
    assert metric("size-distribution")(table, truth)["mean_diameter_rel_error"] == pytest.approx(0.0)
    labels = _disks(CENTRES, radius=4)
    stats = metric("size-distribution")(labels, labels)
    assert stats["n_true"] == 4 and stats["mean_diameter_rel_error"] == 0.0
    with pytest.raises(InputError, match="nm but truth diameters in px"):
        metric("size-distribution")(table, labels)
