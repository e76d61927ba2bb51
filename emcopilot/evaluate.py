"""Scoring predictions against human truth: readers, one-to-one matching, statistics.

Objects are compared in the coarsest representation both sides have
(label image > boxes > points):

- label images: matched when their IoU is at least ``iou_threshold`` (0.5);
- boxes ``(x0, y0, x1, y1)`` in pixels, half-open like ``skimage`` bounding boxes:
  matched when the box IoU is at least ``iou_threshold``;
- points ``(row, column)``: matched when closer than ``radius_px``.

Matching is one-to-one and optimal (maximum number of matches, then best total
IoU or distance): :func:`scipy.optimize.linear_sum_assignment` on each connected
group of candidate pairs, so thousands of objects stay cheap.

Truth readers: ``points`` (folders of CSVs with ``X`` = column, ``Y`` = row),
``yolo`` (``<stem>.txt`` with normalised ``class cx cy w h``) and ``masks``
(label or binary ``.tif`` images). :func:`evaluate_run` scores the
``particles.csv`` of a run (the particle table, docs/particle-table.md) and is what ``emcopilot evaluate`` prints.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .errors import InputError
from .interfaces import Instances
from .io import SUPPORTED_EXTENSIONS as IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

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
    pixel_size_nm = _table_pixel_size_nm(table)
    if kind == "points":
        points = table[["y", "x"]].to_numpy(float).reshape(-1, 2)
        return Objects("points", points=points, diameters_px=diameters, pixel_size_nm=pixel_size_nm, name=name)
    boxes = table[list(needed)].to_numpy(float).reshape(-1, 4)
    return Objects("boxes", boxes=boxes, diameters_px=diameters, pixel_size_nm=pixel_size_nm, name=name)


def _table_pixel_size_nm(table: Any) -> float | None:
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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of half-open boxes ``x0, y0, x1, y1``: (len(a), len(b))."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
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


# --------------------------------------------------------------------------- truth readers

def read_points_truth(path: Path) -> np.ndarray:
    """Atom centres ``(row, column)`` from a CSV with ``X`` (column) and ``Y`` (row)."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as error:
        raise InputError(f"{path}: cannot read as CSV: {error}") from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    if "x" not in columns or "y" not in columns:
        raise InputError(f"{path}: needs columns X (column) and Y (row); found {', '.join(map(str, table.columns))}")
    points = table[[columns["y"], columns["x"]]].to_numpy(float)
    if not np.isfinite(points).all():
        raise InputError(f"{path}: X/Y contain empty or non-numeric values")
    return points


def read_yolo_truth(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Boxes ``x0, y0, x1, y1`` (pixels) from a YOLO ``class cx cy w h`` file (normalised)."""
    height, width = image_shape
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            _, cx, cy, w, h = (float(v) for v in fields[:5])
            if len(fields) < 5:
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'class cx cy w h', got {line.strip()!r}") from None
        if not all(0 <= v <= 1.5 for v in (cx, cy, w, h)):
            raise InputError(f"{path}:{number}: values must be normalised to the image size, got {line.strip()!r}")
        rows.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.array(rows, float).reshape(-1, 4)


def read_mask_truth(path: Path) -> np.ndarray:
    """A label image from a ``.tif``/``.png``; a binary mask is split into connected objects."""
    import tifffile
    from scipy import ndimage

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            import imageio.v3 as iio
            array = iio.imread(path)
    except Exception as error:
        raise InputError(f"{path}: cannot read the mask: {error}") from None
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise InputError(f"{path}: a mask must be a 2-D image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(f"{path}: mask values must be integers (labels) or 0/1, got {array.dtype}")
        array = array.astype(np.int64)
    if len(np.unique(array)) <= 2:  # binary: one object per connected component
        return ndimage.label(array > 0)[0].astype(np.int32)
    return array.astype(np.int32)


def image_shape(path: Path) -> tuple[int, int]:
    """Height and width of an image file, without decoding microscope metadata."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        with tifffile.TiffFile(path) as handle:
            shape = handle.pages[0].shape
    else:
        import imageio.v3 as iio
        shape = iio.improps(path).shape
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- pairing files

def leading_token(name: str) -> str:
    """``021_HAADF_15nm.tif`` -> ``021``: the part of the stem before the first ``_ - .`` or space."""
    return re.split(r"[_\-. ]", Path(name).stem if "." in name else name, maxsplit=1)[0]


def _stem(name: str) -> str:
    """File name without its image extension (``a.jpg`` -> ``a``; ``a.jpg.tif`` -> ``a``)."""
    name = name.split("#", 1)[0]
    while Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        name = name[: -len(Path(name).suffix)]
    return name


def pair_truth_files(image_names: Iterable[str], truth_files: Iterable[Path]) -> tuple[dict[str, Path], list[Path]]:
    """Match truth files to prediction image names.

    First by equal stem (``Cu1.txt`` <-> ``Cu1.jpg``), then by equal leading
    token when that is unique (``021_Results.csv`` <-> ``021_HAADF_....tif``).
    Returns ``({image name: truth file}, [truth files that match nothing])``.
    """
    images = sorted(set(image_names))
    by_stem = {_stem(name): name for name in images}
    by_token: dict[str, list[str]] = {}
    for name in images:
        by_token.setdefault(leading_token(_stem(name)), []).append(name)
    paired: dict[str, Path] = {}
    unmatched: list[Path] = []
    for path in sorted(truth_files):
        image = by_stem.get(path.stem)
        if image is None:
            candidates = by_token.get(leading_token(path.stem), [])
            image = candidates[0] if len(candidates) == 1 else None
        if image is None or image in paired:
            unmatched.append(path)
            continue
        paired[image] = path
    return paired, unmatched


# --------------------------------------------------------------------------- evaluating a run

@dataclass
class EvaluationSettings:
    format: str
    iou_threshold: float = 0.5
    radius_px: float | None = None
    radius_nm: float | None = None
    pixel_size_nm: float | None = None
    images_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _truth_files(paths: Sequence[Path], fmt: str) -> list[Path]:
    suffixes = {"points": (".csv",), "yolo": (".txt",), "masks": (".tif", ".tiff", ".png")}[fmt]
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"--truth {path}: no such file or folder")
    if not files:
        raise InputError(f"--truth {', '.join(map(str, paths))}: no {'/'.join(suffixes)} files found for "
                         f"format {fmt!r}")
    return files


def _find_image(name: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        if folder is None or not folder.is_dir():
            continue
        direct = folder / name
        if direct.is_file():
            return direct
        stem = _stem(name)
        for candidate in sorted(folder.iterdir()):
            if _stem(candidate.name) == stem and candidate.suffix.lower() in IMAGE_EXTENSIONS:
                return candidate
    return None


def read_run_table(pred: Path):
    """The particle table of a run (``particles.csv`` or ``.parquet``, or the run folder)."""
    import pandas as pd

    pred = Path(pred)
    if pred.is_dir():
        pred = pred / "particles.csv"
    if not pred.is_file():
        raise InputError(f"--pred {pred}: no such particle table")
    try:
        table = pd.read_parquet(pred) if pred.suffix == ".parquet" else pd.read_csv(pred)
    except Exception as error:
        raise InputError(f"--pred {pred}: cannot read: {error}") from None
    missing = [c for c in ("image", "x", "y") if c not in table.columns]
    if missing:
        raise InputError(f"--pred {pred}: missing column(s) {', '.join(missing)} (see docs/particle-table.md)")
    table["image"] = table["image"].astype(str)
    return pred, table


def evaluate_run(pred: Path, truth: Sequence[Path], settings: EvaluationSettings) -> dict[str, Any]:
    """Score a run's particle table against truth files; per-image rows plus pooled scores."""
    fmt = settings.format
    if fmt not in ("points", "yolo", "masks"):
        raise InputError(f"--format must be points, yolo or masks, got {fmt!r}")
    pred_path, table = read_run_table(pred)
    masks_dir = pred_path.parent / "masks"
    names = set(table["image"])
    if masks_dir.is_dir():  # images with no detections have masks but no rows
        known_stems = {_stem(n) for n in names}
        names |= {m.name[: -len(m.suffix)] for m in masks_dir.iterdir()
                  if m.suffix.lower() in (".tif", ".tiff") and _stem(m.name) not in known_stems}
    paired, unmatched = pair_truth_files(names, _truth_files(truth, fmt))
    for path in unmatched:
        log.warning("truth file %s matches no predicted image; not scored", path)
    rows, pooled_pred, pooled_true, totals = [], [], [], [0, 0, 0]
    for image, truth_path in sorted(paired.items()):
        image_table = table[table["image"] == image]
        row = _evaluate_image(image, image_table, truth_path, settings, masks_dir, pooled_pred, pooled_true)
        rows.append(row)
        for index, key in enumerate(("tp", "fp", "fn")):
            totals[index] += int(row[key])
    pooled = {"images": len(rows), **detection_scores(*totals)}
    if pooled_true:
        pooled.update(size_distribution(np.concatenate(pooled_pred) if pooled_pred else [], np.concatenate(pooled_true)))
    return {"pred": str(pred_path), "truth": [str(t) for t in truth], "format": fmt,
            "settings": {"iou_threshold": settings.iou_threshold, "radius_px": settings.radius_px,
                         "radius_nm": settings.radius_nm, "pixel_size_nm": settings.pixel_size_nm},
            "images": rows, "pooled": pooled,
            "unmatched_truth_files": [str(p) for p in unmatched],
            "images_without_truth": sorted(names - set(paired))}


def _evaluate_image(image: str, image_table: Any, truth_path: Path, settings: EvaluationSettings,
                    masks_dir: Path, pooled_pred: list, pooled_true: list) -> dict[str, Any]:
    pixel_size_nm = settings.pixel_size_nm or _table_pixel_size_nm(image_table)
    true_diameters = None
    if settings.format == "points":
        prediction = objects_from_table(image_table, image, kind="points")
        truth = Objects("points", points=read_points_truth(truth_path), name=truth_path.name)
    elif settings.format == "yolo":
        prediction = objects_from_table(image_table, image, kind="boxes")
        image_file = _find_image(image, [settings.images_dir, masks_dir])
        if image_file is None:
            raise InputError(f"{truth_path}: YOLO boxes are normalised, so the size of image {image!r} is needed; "
                             f"it is neither in --images {settings.images_dir} nor in {masks_dir}")
        boxes = read_yolo_truth(truth_path, image_shape(image_file))
        true_diameters = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))  # ellipse in the box
        truth = Objects("boxes", boxes=boxes, diameters_px=true_diameters, name=truth_path.name)
    else:
        mask_file = _find_image(image, [masks_dir])
        if mask_file is None:
            raise InputError(f"format masks needs the predicted label image of {image!r} in {masks_dir}")
        prediction = Objects("labels", labels=read_mask_truth(mask_file), name=image)
        truth = Objects("labels", labels=read_mask_truth(truth_path), name=truth_path.name)
        true_diameters = label_geometry(truth.labels)[2]
    prediction.pixel_size_nm = truth.pixel_size_nm = pixel_size_nm
    matching = match(prediction, truth, iou_threshold=settings.iou_threshold,
                     radius_px=settings.radius_px, radius_nm=settings.radius_nm)
    row: dict[str, Any] = {"image": image, "truth_file": truth_path.name, "n_pred": matching.n_pred,
                           "n_true": matching.n_true, **matching.summary()}
    if true_diameters is not None and "eq_diameter_px" in image_table.columns:
        predicted = (image_table["eq_diameter_px"].to_numpy(float) if settings.format != "masks"
                     else label_geometry(prediction.labels)[2])
        stats = size_distribution(predicted, true_diameters)
        row["mean_diameter_rel_error"] = stats["mean_diameter_rel_error"]
        pooled_pred.append(predicted)
        pooled_true.append(true_diameters)
    return row


def format_table(report: Mapping[str, Any]) -> str:
    """Per-image and pooled scores as a fixed-width text table."""
    header = f"{'image':<40} {'n_true':>6} {'n_pred':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'d_err':>7}"
    lines = [header, "-" * len(header)]

    def line(name: str, values: Mapping[str, Any]) -> str:
        error = values.get("mean_diameter_rel_error")
        error_text = f"{error:+7.1%}" if error is not None and np.isfinite(error) else f"{'-':>7}"
        n_true = values.get("n_true", values.get("tp", 0) + values.get("fn", 0))
        n_pred = values.get("n_pred", values.get("tp", 0) + values.get("fp", 0))
        return (f"{name[:40]:<40} {int(n_true):>6} {int(n_pred):>6} {values['precision']:>6.3f} "
                f"{values['recall']:>6.3f} {values['f1']:>6.3f} {error_text}")

    for row in report["images"]:
        lines.append(line(row["image"], row))
    lines.append("-" * len(header))
    lines.append(line(f"pooled ({report['pooled']['images']} images)", report["pooled"]))
    if report["unmatched_truth_files"]:
        lines.append(f"{len(report['unmatched_truth_files'])} truth file(s) matched no predicted image: "
                     + ", ".join(Path(p).name for p in report["unmatched_truth_files"]))
    return "\n".join(lines)
