"""Accuracy and speed of the prior extractors against human labels.

Runs a built-in recipe's sample description (no per-image tuning) through a
prior extractor on the development images and scores the detections:

- ``ardagen-dev`` (YOLO boxes): one-to-one matching at box IoU >= 0.5 (the
  predicted object's bounding box against the human box), and the looser
  "centroid in box" matching; mean equivalent diameter of the predictions
  against sqrt(w·h) of the boxes; HAADF and BF images separately;
- ``acstem-dev`` (clicked atom centres): one-to-one matching within 0.1 nm.

Usage::

    python benchmarks/priors_accuracy.py [DATA] --set ardagen-haadf|ardagen-bf|acstem \
        [--extractor classical] [--params '{"min_snr": 3}'] [--out results/priors.json]

Writes JSON (per image and pooled) and prints a summary line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BF_IMAGES = {"PtC1", "PtCo1", "PtCo3", "Pt_carbon1"}
SETS = {
    "ardagen-haadf": ("ardagen-dev", "nanoparticles-haadf", "classical"),
    "ardagen-bf": ("ardagen-dev", "nanoparticles-bf-stem", "classical"),
    "acstem": ("acstem-dev", "single-atom-catalyst-haadf", "atoms"),
}
ATOM_RADIUS_NM = 0.1


def centroid_in_box_matches(centroids: np.ndarray, boxes: np.ndarray) -> int:
    """Largest one-to-one matching of centroids (row, col) to the boxes containing them."""
    from scipy.optimize import linear_sum_assignment
    if not len(centroids) or not len(boxes):
        return 0
    rows, cols = centroids[:, 0][:, None], centroids[:, 1][:, None]
    inside = (cols >= boxes[None, :, 0]) & (cols < boxes[None, :, 2]) & (rows >= boxes[None, :, 1]) & (rows < boxes[None, :, 3])
    cost = np.where(inside, 0.0, 1.0)
    r, c = linear_sum_assignment(cost)
    return int(inside[r, c].sum())


def scores(tp: int, n_pred: int, n_true: int) -> dict:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"tp": tp, "n_pred": n_pred, "n_true": n_true, "precision": precision, "recall": recall, "f1": f1}


def image_pairs(data: Path, which: str):
    folder = data / SETS[which][0]
    if which == "acstem":
        for image in sorted((folder / "images").glob("*.tif")):
            yield image, folder / "labels" / f"{image.name.split('_')[0]}_Results.csv"
        return
    for image in sorted((folder / "images").glob("*.jpg")):
        if (image.stem in BF_IMAGES) == (which == "ardagen-bf"):
            yield image, folder / "labels" / f"{image.stem}.txt"


def evaluate(data: Path, which: str, extractor_name: str | None, params: dict, oracle_scale: bool = False) -> dict:
    from emcopilot.analysis.evaluate import Objects, match, read_points_truth, read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.analysis.measure import particle_table
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe

    _, recipe_name, default_extractor = SETS[which]
    recipe = load_recipe(recipe_name)
    extractor_name = extractor_name or default_extractor
    extractor = get_registry().get("prior_extractor", extractor_name).create(params, recipe.sample)
    per_image, totals = [], {"tp": 0, "tp_centroid": 0, "n_pred": 0, "n_true": 0}
    seconds, megapixels, diameter_errors, estimate_ratios = 0.0, 0.0, [], []
    for image_path, label_path in image_pairs(data, which):
        micrograph = read_micrograph(image_path)[0]
        if oracle_scale and which != "acstem":  # diagnostic: the scale the human boxes imply
            boxes = read_yolo_truth(label_path, micrograph.shape)
            box_px = np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
            micrograph.pixel_size_nm = float(np.sqrt(np.prod(recipe.sample.diameter_nm)) / box_px)
        started = time.perf_counter()
        instances = extractor.extract(micrograph)
        elapsed = time.perf_counter() - started
        seconds += elapsed
        megapixels += micrograph.data.size / 1e6
        table = particle_table(instances, micrograph)
        row = {"image": micrograph.name, "seconds": elapsed, "shape": list(micrograph.shape),
               "pixel_size_nm_estimate": instances.metadata.get("pixel_size_nm_estimate")}
        if which == "acstem":
            truth = read_points_truth(label_path)
            predicted = table[["y", "x"]].to_numpy(float)
            radius_px = ATOM_RADIUS_NM / micrograph.pixel_size_nm
            matching = match(Objects("points", points=predicted), Objects("points", points=truth), radius_px=radius_px)
            row.update(scores(matching.tp, len(predicted), len(truth)))
        else:
            truth = read_yolo_truth(label_path, micrograph.shape)
            predicted = table[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].to_numpy(float)
            matching = match(Objects("boxes", boxes=predicted), Objects("boxes", boxes=truth), iou_threshold=0.5)
            row.update(scores(matching.tp, len(predicted), len(truth)))
            centroid_tp = centroid_in_box_matches(table[["y", "x"]].to_numpy(float), truth)
            row["centroid"] = scores(centroid_tp, len(predicted), len(truth))
            totals["tp_centroid"] += centroid_tp
            true_diameter = np.sqrt((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1]))
            if len(table):
                error = (table["eq_diameter_px"].mean() - true_diameter.mean()) / true_diameter.mean()
                row["mean_diameter_rel_error"] = float(error)
                diameter_errors.append(float(error))
            if row["pixel_size_nm_estimate"]:
                # implied scale check: recipe's typical size over the human median box
                typical = float(np.sqrt(np.prod(recipe.sample.diameter_nm)))
                estimate_ratios.append(float(typical / np.median(true_diameter) / row["pixel_size_nm_estimate"]))
        for key in ("tp", "n_pred", "n_true"):
            totals[key] += row[key]
        per_image.append(row)
        print(f"  {micrograph.name:40s} P {row['precision']:.2f} R {row['recall']:.2f} F1 {row['f1']:.2f}"
              f" ({row['n_pred']} pred / {row['n_true']} true, {elapsed:.2f} s)", file=sys.stderr)
    pooled = scores(totals["tp"], totals["n_pred"], totals["n_true"])
    result = {"set": which, "oracle_scale": oracle_scale, "recipe": recipe_name, "extractor": extractor_name, "params": extractor.params,
              "pooled": pooled, "mean_f1_per_image": float(np.mean([r["f1"] for r in per_image])),
              "seconds_per_megapixel": seconds / megapixels,
              "seconds_per_1024px_image": seconds / megapixels * 1024 * 1024 / 1e6,
              "images": per_image}
    if which != "acstem":
        result["pooled_centroid_in_box"] = scores(totals["tp_centroid"], totals["n_pred"], totals["n_true"])
        result["mean_abs_diameter_rel_error"] = float(np.mean(np.abs(diameter_errors))) if diameter_errors else None
        result["mean_diameter_rel_error"] = float(np.mean(diameter_errors)) if diameter_errors else None
        if estimate_ratios:
            result["pixel_size_estimate_over_box_implied"] = [float(v) for v in estimate_ratios]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default="../shared/data", type=Path)
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--extractor", default=None, help="prior extractor name (default: per set)")
    parser.add_argument("--params", default="{}", help="extractor params as JSON")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--oracle-scale", action="store_true",
                        help="diagnostic: set each image's pixel size from the median human box instead of "
                             "estimating it (separates scale-estimate errors from segmentation errors)")
    args = parser.parse_args(argv)
    result = evaluate(args.data, args.set, args.extractor, json.loads(args.params), args.oracle_scale)
    pooled = result["pooled"]
    line = (f"{args.set} {result['extractor']}: P {pooled['precision']:.3f} R {pooled['recall']:.3f} "
            f"F1 {pooled['f1']:.3f}")
    if "pooled_centroid_in_box" in result:
        line += f" | centroid-in-box F1 {result['pooled_centroid_in_box']['f1']:.3f}"
        line += f" | mean diameter error {result['mean_diameter_rel_error']:+.3f} (|.| {result['mean_abs_diameter_rel_error']:.3f})"
    line += f" | {result['seconds_per_1024px_image']:.2f} s per 1024² image"
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
