"""Scoring a run's particle table against human truth: what ``emcopilot evaluate`` prints.

:func:`evaluate_run` reads the ``particles.csv`` of a run (the particle table,
docs/particle-table.md), pairs each image with its truth file
(:mod:`emcopilot.analysis.truth`), matches objects one to one (:mod:`emcopilot.analysis.matching`)
and returns per-image and pooled detection and size scores. The matching and
truth-reading names are importable from here as well.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import InputError
from .matching import (KINDS, Matching, Objects, as_objects, box_iou, detection_scores, diameters_of,  # noqa: F401
                       NEAR_MISS_IOU, dice_iou, label_geometry, match, near_misses, objects_from_table, optimal_matching, point_radius_px,
                       size_distribution, table_pixel_size_nm)
from .truth import (IMAGE_EXTENSIONS, image_shape, leading_token, pair_truth_files, read_mask_truth,  # noqa: F401
                    read_points_truth, read_yolo_truth, image_stem)

log = logging.getLogger(__name__)


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
        stem = image_stem(name)
        for candidate in sorted(folder.iterdir()):
            if image_stem(candidate.name) == stem and candidate.suffix.lower() in IMAGE_EXTENSIONS:
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
        known_stems = {image_stem(n) for n in names}
        names |= {m.name[: -len(m.suffix)] for m in masks_dir.iterdir()
                  if m.suffix.lower() in (".tif", ".tiff") and image_stem(m.name) not in known_stems}
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
    if rows and all("near_misses" in row for row in rows):
        pooled["near_misses"] = _pooled_near_misses(rows, totals)
    if pooled_true:
        pooled.update(size_distribution(np.concatenate(pooled_pred) if pooled_pred else [], np.concatenate(pooled_true)))
    return {"pred": str(pred_path), "truth": [str(t) for t in truth], "format": fmt,
            "settings": {"iou_threshold": settings.iou_threshold, "radius_px": settings.radius_px,
                         "radius_nm": settings.radius_nm, "pixel_size_nm": settings.pixel_size_nm},
            "images": rows, "pooled": pooled,
            "unmatched_truth_files": [str(p) for p in unmatched],
            "images_without_truth": sorted(names - set(paired))}


def _pooled_near_misses(rows: Sequence[Mapping[str, Any]], totals: Sequence[int]) -> dict[str, Any]:
    """The images' near misses summed, and the pooled F1 had each image's been placed."""
    keys = ("predictions", "truths", "merges", "splits")
    out: dict[str, Any] = {key: int(sum(row["near_misses"][key] for row in rows)) for key in keys}
    placed = sum(min(row["near_misses"]["predictions"], row["near_misses"]["truths"]) for row in rows)
    tp, fp, fn = totals
    out["f1_if_placed"] = detection_scores(tp + placed, fp - placed, fn - placed)["f1"]
    return out


def _evaluate_image(image: str, image_table: Any, truth_path: Path, settings: EvaluationSettings,
                    masks_dir: Path, pooled_pred: list, pooled_true: list) -> dict[str, Any]:
    pixel_size_nm = settings.pixel_size_nm or table_pixel_size_nm(image_table)
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
    nearly = near_misses(prediction, truth, matching)
    if nearly is not None:
        row["near_misses"] = nearly
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
    nearly = report["pooled"].get("near_misses")
    if nearly and (nearly["predictions"] or nearly["truths"]):
        lines.append(f"near misses (box IoU {NEAR_MISS_IOU}-{report['settings']['iou_threshold']}): "
                     f"{nearly['predictions']} predictions, {nearly['truths']} true objects "
                     f"({nearly['merges']} merges, {nearly['splits']} splits); F1 {nearly['f1_if_placed']:.3f} "
                     f"had they been placed")
    if report["unmatched_truth_files"]:
        lines.append(f"{len(report['unmatched_truth_files'])} truth file(s) matched no predicted image: "
                     + ", ".join(Path(p).name for p in report["unmatched_truth_files"]))
    return "\n".join(lines)
