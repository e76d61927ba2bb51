"""Objects of one image in any representation, one-to-one matching, size statistics.

Objects are compared in the coarsest representation both sides have
(label image > boxes > points):

- label images: matched when their IoU is at least ``iou_threshold`` (0.5);
- boxes ``(x0, y0, x1, y1)`` in pixels, half-open like ``skimage`` bounding boxes:
  matched when the box IoU is at least ``iou_threshold``;
- points ``(row, column)``: matched when closer than ``radius_px``.

Matching is one-to-one and optimal (maximum number of matches, then best total
IoU or distance): :func:`scipy.optimize.linear_sum_assignment` on each connected
group of candidate pairs, so thousands of objects stay cheap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.interfaces import Instances

KINDS = ("points", "boxes", "labels")  # coarse -> fine


# --------------------------------------------------------------------------- objects

@dataclass
class Objects:
    """The objects of one image in one representation, with their diameters.

    ``labels``: int label image; ``boxes``: (N, 4) ``x0, y0, x1, y1`` pixels;
    ``points``: (N, 2) ``row, column`` pixels. ``diameters_px``: equivalent
    diameters (N,) when known. ``pixel_size_nm``: calibration when known.
    """

    kind: str
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    points: np.ndarray | None = None
    diameters_px: np.ndarray | None = None
    pixel_size_nm: float | None = None
    name: str = ""

    def __len__(self) -> int:
        if self.kind == "labels":
            return int(len(_label_ids(self.labels)))
        return int(len(self.boxes if self.kind == "boxes" else self.points))

    def as_kind(self, kind: str) -> "Objects":
        """The same objects, coarsened to ``kind`` (labels -> boxes -> points)."""
        if KINDS.index(kind) > KINDS.index(self.kind):
            raise InputError(f"{self.name or 'objects'}: cannot turn {self.kind} into {kind}")
        if kind == self.kind:
            return self
        if self.kind == "labels":
            boxes, centroids, diameters = label_geometry(self.labels)
        else:
            boxes = self.boxes
            centroids = np.stack([(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2], axis=1) \
                if len(boxes) else np.zeros((0, 2))
            diameters = self.diameters_px
        if kind == "boxes":
            return Objects("boxes", boxes=boxes, diameters_px=diameters, pixel_size_nm=self.pixel_size_nm, name=self.name)
        return Objects("points", points=centroids, diameters_px=diameters, pixel_size_nm=self.pixel_size_nm,
                       name=self.name)


def _label_ids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    return ids[ids > 0]


def label_geometry(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half-open boxes (x0, y0, x1, y1), centroids (row, col) and equivalent diameters."""
    from scipy import ndimage

    ids = _label_ids(labels)
    if not len(ids):
        return np.zeros((0, 4)), np.zeros((0, 2)), np.zeros(0)
    slices = ndimage.find_objects(labels.astype(np.int64))
    boxes = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in (slices[i - 1] for i in ids)], float)
    centroids = np.array(ndimage.center_of_mass(np.ones(labels.shape), labels, ids), float).reshape(-1, 2)
    areas = np.bincount(labels.ravel().astype(np.int64))[ids]
    return boxes, centroids, np.sqrt(4 * areas / np.pi)


def as_objects(value: Any, name: str = "") -> Objects:
    """Objects from an :class:`Objects`, :class:`Instances`, label image or particle table."""
    if isinstance(value, Objects):
        return value
    if isinstance(value, Instances):
        pixel_size_nm = value.metadata.get("pixel_size_nm")
        if value.labels is not None:
            return Objects("labels", labels=value.labels, pixel_size_nm=pixel_size_nm, name=name)
        return Objects("points", points=value.points, pixel_size_nm=pixel_size_nm, name=name)
    if hasattr(value, "columns"):  # a particle table (pandas)
        return objects_from_table(value, name)
    array = np.asarray(value)
    if array.ndim == 2 and (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        labels = array.astype(np.int32)
        if array.dtype == bool:
            from scipy import ndimage
            labels = ndimage.label(array)[0].astype(np.int32)
        return Objects("labels", labels=labels, name=name)
    raise InputError(f"{name or 'value'}: expected Instances, an integer label image, a particle table or "
                     f"Objects, got {type(value).__name__} {getattr(array, 'shape', '')}; wrap points as "
                     "Instances(points=...) and boxes as Objects('boxes', boxes=...)")


def objects_from_table(table: Any, name: str = "", kind: str = "boxes") -> Objects:
    """Boxes (or points) of a particle table; x = column, y = row."""
    needed = ("x", "y") if kind == "points" else ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")
    missing = [column for column in needed if column not in table.columns]
    if missing:
        raise InputError(f"{name or 'particle table'}: missing column(s) {', '.join(missing)}")
    diameters = table["eq_diameter_px"].to_numpy(float) if "eq_diameter_px" in table.columns else None
    pixel_size_nm = table_pixel_size_nm(table)
    if kind == "points":
        points = table[["y", "x"]].to_numpy(float).reshape(-1, 2)
        return Objects("points", points=points, diameters_px=diameters, pixel_size_nm=pixel_size_nm, name=name)
    boxes = table[list(needed)].to_numpy(float).reshape(-1, 4)
    return Objects("boxes", boxes=boxes, diameters_px=diameters, pixel_size_nm=pixel_size_nm, name=name)


def table_pixel_size_nm(table: Any) -> float | None:
    """The pixel size a particle table was measured at (its nm and px columns), or None."""
    for nm_column, px_column in (("eq_diameter_nm", "eq_diameter_px"), ("x_nm", "x")):
        if nm_column in table.columns and px_column in table.columns:
            nm = table[nm_column].to_numpy(float)
            px = table[px_column].to_numpy(float)
            ok = np.isfinite(nm) & np.isfinite(px) & (px > 0)
            if ok.any():
                return float(np.median(nm[ok] / px[ok]))
    return None


# --------------------------------------------------------------------------- matching

@dataclass
class Matching:
    """One-to-one matches between predicted and true objects."""

    pairs: np.ndarray  # (K, 2): prediction index, truth index
    scores: np.ndarray  # (K,): IoU for labels/boxes, distance in px for points
    n_pred: int
    n_true: int
    kind: str

    @property
    def tp(self) -> int:
        return int(len(self.pairs))

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_true - self.tp

    def summary(self) -> dict[str, float]:
        return detection_scores(self.tp, self.fp, self.fn)


def detection_scores(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1; an empty side counts as perfect (0/0 -> 1)."""
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"tp": float(tp), "fp": float(fp), "fn": float(fn),
            "precision": precision, "recall": recall, "f1": f1}


def optimal_matching(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray,
                     n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-cardinality, minimum-cost one-to-one matching over candidate pairs.

    ``costs`` in [0, 1] for the candidate pairs ``(rows[k], cols[k])``. Solved
    with ``linear_sum_assignment`` on each connected group of candidates.
    Returns ``(pairs (K, 2), costs (K,))``.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols, costs = np.asarray(rows, int), np.asarray(cols, int), np.asarray(costs, float)
    if not len(rows):
        return np.zeros((0, 2), int), np.zeros(0)
    graph = coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2)
    _, component = connected_components(graph, directed=False)
    pair_component = component[rows]
    order = np.argsort(pair_component, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_component[order])) + 1
    matched, matched_costs = [], []
    for group in np.split(order, bounds):
        group_rows, row_index = np.unique(rows[group], return_inverse=True)
        group_cols, col_index = np.unique(cols[group], return_inverse=True)
        penalty = 2.0 * (len(group_rows) + len(group_cols) + 1)  # any extra match beats any cost saving
        matrix = np.full((len(group_rows), len(group_cols)), penalty)
        matrix[row_index, col_index] = costs[group]
        assigned_rows, assigned_cols = linear_sum_assignment(matrix)
        keep = matrix[assigned_rows, assigned_cols] < penalty
        matched.append(np.stack([group_rows[assigned_rows[keep]], group_cols[assigned_cols[keep]]], axis=1))
        matched_costs.append(matrix[assigned_rows[keep], assigned_cols[keep]])
    return np.concatenate(matched), np.concatenate(matched_costs)


def _label_candidates(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Pairwise IoU of overlapping label pairs (sparse): rows, cols, iou, n_pred, n_true."""
    if pred.shape != truth.shape:
        raise InputError(f"prediction labels {pred.shape} and truth labels {truth.shape} differ in shape")
    pred_ids, pred_index = np.unique(pred.ravel(), return_inverse=True)
    true_ids, true_index = np.unique(truth.ravel(), return_inverse=True)
    # index 0 is background only when the image has background
    pred_offset = 1 if pred_ids[0] == 0 else 0
    true_offset = 1 if true_ids[0] == 0 else 0
    pred_index, true_index = pred_index - pred_offset, true_index - true_offset
    n_pred, n_true = len(pred_ids) - pred_offset, len(true_ids) - true_offset
    pred_area = np.bincount(pred_index[pred_index >= 0], minlength=n_pred)
    true_area = np.bincount(true_index[true_index >= 0], minlength=n_true)
    both = (pred_index >= 0) & (true_index >= 0)
    codes, overlap = np.unique(pred_index[both].astype(np.int64) * max(n_true, 1) + true_index[both],
                               return_counts=True)
    rows, cols = codes // max(n_true, 1), codes % max(n_true, 1)
    iou = overlap / (pred_area[rows] + true_area[cols] - overlap)
    return rows, cols, iou, n_pred, n_true


def _box_intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise intersection areas of half-open boxes ``x0, y0, x1, y1`` (len(a), len(b)), and their areas."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return width * height, (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of half-open boxes ``x0, y0, x1, y1``: (len(a), len(b))."""
    inter, area_a, area_b = _box_intersections(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match(prediction: Any, truth: Any, *, iou_threshold: float = 0.5, radius_px: float | None = None,
          radius_nm: float | None = None) -> Matching:
    """One-to-one optimal matching of predicted and true objects (see module doc)."""
    from scipy.spatial import cKDTree

    pred, true = as_objects(prediction, "prediction"), as_objects(truth, "truth")
    kind = min(pred.kind, true.kind, key=KINDS.index)
    pred, true = pred.as_kind(kind), true.as_kind(kind)
    if kind == "labels":
        rows, cols, iou, n_pred, n_true = _label_candidates(pred.labels, true.labels)
        keep = iou >= iou_threshold
        pairs, costs = optimal_matching(rows[keep], cols[keep], 1 - iou[keep], n_pred, n_true)
        return Matching(pairs, 1 - costs, n_pred, n_true, kind)
    if kind == "boxes":
        iou = box_iou(pred.boxes, true.boxes)
        rows, cols = np.nonzero(iou >= iou_threshold)
        pairs, costs = optimal_matching(rows, cols, 1 - iou[rows, cols], len(pred.boxes), len(true.boxes))
        return Matching(pairs, 1 - costs, len(pred.boxes), len(true.boxes), kind)
    radius = point_radius_px(radius_px, radius_nm, pred.pixel_size_nm or true.pixel_size_nm)
    n_pred, n_true = len(pred.points), len(true.points)
    if not n_pred or not n_true:
        return Matching(np.zeros((0, 2), int), np.zeros(0), n_pred, n_true, kind)
    neighbours = cKDTree(pred.points).query_ball_point(true.points, r=radius)
    cols = np.repeat(np.arange(n_true), [len(hits) for hits in neighbours])
    rows = np.fromiter((hit for hits in neighbours for hit in hits), int, count=len(cols))
    values = np.linalg.norm(pred.points[rows] - true.points[cols], axis=1)
    pairs, costs = optimal_matching(rows, cols, values / radius if radius > 0 else values, n_pred, n_true)
    return Matching(pairs, costs * radius, n_pred, n_true, kind)


#: :func:`near_misses`: an unmatched object overlapping one of the other side by at least this box IoU
NEAR_MISS_IOU = 0.2


def near_misses(prediction: Any, truth: Any, matching: Matching, *, low: float = NEAR_MISS_IOU) -> dict[str, int] | None:
    """What the false positives and misses of a box or label ``matching`` are (``None`` for points).

    ``predictions`` / ``truths``: the unmatched objects that overlap one of the other side by a box
    IoU of at least ``low`` (found in the right place with the wrong outline, not missed); of those
    predictions, ``merges`` cover two or more true objects (each more than half inside its box) and
    ``splits`` lie mostly inside a true object that holds another such prediction. ``f1_if_placed``
    is the F1 had every such prediction matched one such truth: how much of the gap is where the
    outlines go, not what was found.
    """
    pred, true = as_objects(prediction, "prediction"), as_objects(truth, "truth")
    if "points" in (pred.kind, true.kind, matching.kind):
        return None
    boxes_pred, boxes_true = pred.as_kind("boxes").boxes, true.as_kind("boxes").boxes
    unmatched_pred = np.setdiff1d(np.arange(len(boxes_pred)), matching.pairs[:, 0])
    unmatched_true = np.setdiff1d(np.arange(len(boxes_true)), matching.pairs[:, 1])
    out = {"predictions": 0, "truths": 0, "merges": 0, "splits": 0}
    if len(boxes_pred) and len(boxes_true):
        iou = box_iou(boxes_pred, boxes_true)
        near_pred = unmatched_pred[iou[unmatched_pred].max(axis=1) >= low]
        near_true = unmatched_true[iou[:, unmatched_true].max(axis=0) >= low]
        inside_true = _inside_fraction(boxes_true, boxes_pred) > 0.5  # (true, pred): true mostly in pred's box
        inside_pred = _inside_fraction(boxes_pred, boxes_true) > 0.5  # (pred, true)
        merges = inside_true[:, near_pred].sum(axis=0) >= 2
        holders = inside_pred.sum(axis=0) >= 2  # true objects holding two or more predictions
        splits = ~merges & (inside_pred[near_pred] & holders[None, :]).any(axis=1)
        out = {"predictions": int(len(near_pred)), "truths": int(len(near_true)),
               "merges": int(merges.sum()), "splits": int(splits.sum())}
    placed = min(out["predictions"], out["truths"])
    out["f1_if_placed"] = detection_scores(matching.tp + placed, matching.fp - placed, matching.fn - placed)["f1"]
    return out


def _inside_fraction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)): the share of each box of ``a`` that lies inside each box of ``b``."""
    inter, area_a, _ = _box_intersections(a, b)
    return np.divide(inter, area_a[:, None], out=np.zeros_like(inter), where=area_a[:, None] > 0)


def point_radius_px(radius_px: float | None, radius_nm: float | None, pixel_size_nm: float | None) -> float:
    """The matching radius in pixels; ``radius_nm`` needs a pixel size."""
    if radius_nm is not None:
        if not pixel_size_nm:
            raise InputError(f"radius_nm={radius_nm} needs the pixel size, which is unknown here; "
                             "give radius_px (or --radius-px) instead, or a pixel size")
        return float(radius_nm) / float(pixel_size_nm)
    if radius_px is None:
        raise InputError("matching points needs radius_px or radius_nm (the largest distance of a match)")
    return float(radius_px)


# --------------------------------------------------------------------------- statistics

def dice_iou(prediction: Any, truth: Any) -> dict[str, float]:
    """Foreground Dice and IoU of two label images (or boolean masks)."""
    pred = _foreground(prediction, "prediction")
    true = _foreground(truth, "truth")
    if pred.shape != true.shape:
        raise InputError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    intersection = float(np.logical_and(pred, true).sum())
    total = float(pred.sum() + true.sum())
    union = total - intersection
    return {"dice": 2 * intersection / total if total else 1.0, "iou": intersection / union if union else 1.0}


def _foreground(value: Any, name: str) -> np.ndarray:
    if isinstance(value, Instances):
        if value.labels is None:
            raise InputError(f"{name}: Dice/IoU need a label image; these Instances hold points only")
        return value.labels > 0
    array = np.asarray(value)
    if array.ndim != 2:
        raise InputError(f"{name}: Dice/IoU need a 2-D label image or mask, got shape {array.shape}")
    return array > 0


def diameters_of(value: Any, name: str = "", prefer_nm: bool = True) -> tuple[np.ndarray, str]:
    """Diameters and their unit ('nm' or 'px') from an array, particle table or objects."""
    if hasattr(value, "columns"):
        if prefer_nm and "eq_diameter_nm" in value.columns and value["eq_diameter_nm"].notna().all():
            return value["eq_diameter_nm"].to_numpy(float), "nm"
        if "eq_diameter_px" in value.columns:
            return value["eq_diameter_px"].to_numpy(float), "px"
        raise InputError(f"{name or 'particle table'}: no eq_diameter_nm or eq_diameter_px column")
    if isinstance(value, (Objects, Instances)) or (np.ndim(value) == 2):
        objects = as_objects(value, name)
        if objects.kind == "labels":
            diameters = label_geometry(objects.labels)[2]
        elif objects.diameters_px is not None:
            diameters = objects.diameters_px
        else:
            raise InputError(f"{name or 'objects'}: these {objects.kind} carry no diameters")
        if prefer_nm and objects.pixel_size_nm:
            return np.asarray(diameters, float) * objects.pixel_size_nm, "nm"
        return np.asarray(diameters, float), "px"
    return np.asarray(value, float).ravel(), "given"


def size_distribution(predicted: Sequence[float], true: Sequence[float]) -> dict[str, float]:
    """Diameter distribution agreement.

    Relative errors are signed, ``(pred - true) / true``; ``ks_statistic`` is the
    two-sample Kolmogorov-Smirnov statistic; ``wasserstein_rel`` is the 1-D
    earth mover's distance divided by the true mean diameter.
    """
    from scipy.stats import ks_2samp, wasserstein_distance

    predicted = np.asarray(predicted, float)
    true = np.asarray(true, float)
    for label, values in (("predicted", predicted), ("true", true)):
        if not np.isfinite(values).all():
            raise InputError(f"{label} diameters contain NaN or infinite values")
    out = {"n_pred": float(len(predicted)), "n_true": float(len(true))}
    if not len(predicted) or not len(true):
        return {**out, "mean_pred": math.nan, "mean_true": math.nan, "mean_diameter_rel_error": math.nan,
                "median_diameter_rel_error": math.nan, "ks_statistic": math.nan, "wasserstein_rel": math.nan}
    mean_true, median_true = float(true.mean()), float(np.median(true))
    return {**out, "mean_pred": float(predicted.mean()), "mean_true": mean_true,
            "mean_diameter_rel_error": (float(predicted.mean()) - mean_true) / mean_true,
            "median_diameter_rel_error": (float(np.median(predicted)) - median_true) / median_true,
            "ks_statistic": float(ks_2samp(predicted, true).statistic),
            "wasserstein_rel": float(wasserstein_distance(predicted, true)) / mean_true}
