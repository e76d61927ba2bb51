"""U-Net accuracy on the human-labelled development sets.

Two training sources, the same evaluation:

- ``--source human`` (the supervised baseline, "the human-annotated model"):
  k-fold over images; the U-Net trains on the human labels of the other folds
  (YOLO boxes become inscribed ellipses, atom points become Gaussian heatmaps)
  and predicts the held-out images.
- ``--source synthetic``: the U-Net trains only on physics-synthetic images
  (``emcopilot.specimen.layout`` + ``physical`` generator + ``haadf-stem``/``bf-stem``
  adapter, not fitted to any real image) and predicts every image of the set.

Sets: ``ardagen-haadf`` and ``ardagen-bf`` (YOLO boxes; a match is box IoU >= 0.5
between the predicted particle's bounding box and the human box) and
``acstem`` (atom centres; a match is a distance <= ``--radius-nm``).

The ardagen images carry no calibration: images wider than ``--max-image-px``
are downsampled by an integer factor and then treated as being at
``--ardagen-pixel-size-nm`` (an assumption, recorded in the JSON; it only
matters for the synthetic source, whose particles are drawn in nm).

``--recipe NAME`` makes the comparison with the closed loop exact: the U-Net gets
that recipe's sample block and segmenter parameters (background, flips, peak
threshold) and, unless given here, its ``fast`` profile's steps, batch, crop and
``max_minutes``; only the training data differs (human labels of the other folds
instead of synthetic images). The (downsampled) ardagen images are then treated as
being at the recipe's working pixel size instead of ``--ardagen-pixel-size-nm``.
With ``--oracle-scale`` the ardagen images are not downsampled but given the pixel
size at which their median human box spans the recipe's typical diameter (the
geometric mean of ``diameter_nm``), and resampled to the working scale as the
loop does with a known scale (``closed_loop.py --oracle-scale``): the two then
differ only in their training data.

    python benchmarks/supervised_baseline.py --data ../shared/data --sets ardagen-haadf ardagen-bf acstem \
        --source human --folds 4 --steps 300 --out benchmarks/results/supervised_baseline.json
    python benchmarks/supervised_baseline.py --data ../shared/data --sets acstem \
        --recipe single-atom-catalyst-haadf --folds 3 --threads 2 --peak-thresholds 0.3 0.4 0.5 0.7 \
        --out /tmp/supervised_sac.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

BF_IMAGES = {"PtC1", "PtCo1", "PtCo3", "Pt_carbon1"}
ACSTEM_PIXEL_SIZE_NM = 0.029297


# --------------------------------------------------------------------------- data

def ellipse_labels(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inscribed ellipse of each box (x0, y0, x1, y1); smaller objects drawn last stay visible."""
    labels = np.zeros(shape, np.int32)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for index in np.argsort(-areas):
        x0, y0, x1, y1 = boxes[index]
        cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 0.5), max((x1 - x0) / 2, 0.5)
        r0, r1 = max(0, int(math.floor(y0))), min(shape[0], int(math.ceil(y1)) + 1)
        c0, c1 = max(0, int(math.floor(x0))), min(shape[1], int(math.ceil(x1)) + 1)
        rows, cols = np.mgrid[r0:r1, c0:c1]
        inside = ((rows + 0.5 - cy) / ry) ** 2 + ((cols + 0.5 - cx) / rx) ** 2 <= 1
        labels[r0:r1, c0:c1][inside] = index + 1
    return labels


def load_ardagen(data: Path, bright_field: bool, max_image_px: int) -> list[dict]:
    from emcopilot.analysis.evaluate import read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from skimage.transform import downscale_local_mean

    items = []
    for path in sorted((data / "ardagen-dev" / "images").glob("*.jpg")):
        if (path.stem in BF_IMAGES) != bright_field:
            continue
        image = read_micrograph(path)[0].data
        boxes = read_yolo_truth(data / "ardagen-dev" / "labels" / f"{path.stem}.txt", image.shape)
        factor = max(1, math.ceil(max(image.shape) / max_image_px)) if max_image_px else 1
        if factor > 1:
            image = downscale_local_mean(image, (factor, factor)).astype(np.float32)
            boxes = boxes / factor
        items.append({"name": path.name, "image": image, "boxes": boxes, "downsampled": factor})
    return items


def load_acstem(data: Path) -> list[dict]:
    from emcopilot.analysis.evaluate import read_points_truth
    from emcopilot.io.readers import read_micrograph

    items = []
    for path in sorted((data / "acstem-dev" / "images").glob("*.tif")):
        micrograph = read_micrograph(path)[0]
        points = read_points_truth(data / "acstem-dev" / "labels" / f"{path.name.split('_')[0]}_Results.csv")
        items.append({"name": path.name, "image": micrograph.data, "points": points,
                      "pixel_size_nm": micrograph.pixel_size_nm or ACSTEM_PIXEL_SIZE_NM})
    return items


def sample_for(set_name: str, pixel_size_nm: float):
    from emcopilot.core.recipe import Sample

    if set_name == "acstem":
        return Sample.from_dict({"kind": "atoms", "material": "Pt", "support": "N-doped carbon",
                                 "modality": "haadf-stem", "diameter_nm": [0.08, 0.2], "working_pixel_size_nm": 0.03})
    return Sample.from_dict({"kind": "particles", "modality": "bf-stem" if set_name == "ardagen-bf" else "haadf-stem",
                             "diameter_nm": [1.6, 9.7], "working_pixel_size_nm": pixel_size_nm})


# --------------------------------------------------------------------------- training pairs

def human_pairs(items: list[dict], sample) -> tuple[list[np.ndarray], list]:
    """Training images at the working pixel size with their human labels."""
    from emcopilot import Instances
    from emcopilot.specimen.scale import plan_scaling, points_to_working, to_working, to_working_labels

    images, labels = [], []
    for item in items:
        if "points" in item:
            scaling = plan_scaling(item["image"].shape, item["pixel_size_nm"], sample.working_pixel_size_nm)
            images.append(to_working(item["image"], scaling))
            labels.append(Instances(points=points_to_working(item["points"], scaling)))
        else:
            labels_px = ellipse_labels(item["boxes"], item["image"].shape)
            if "pixel_size_nm" in item:
                scaling = plan_scaling(item["image"].shape, item["pixel_size_nm"], sample.working_pixel_size_nm)
                images.append(to_working(item["image"], scaling))
                labels.append(Instances(labels=to_working_labels(labels_px, scaling)))
            else:
                images.append(item["image"])
                labels.append(Instances(labels=labels_px))
    return images, labels


def synthetic_pairs(sample, count: int, size_px: int, seed: int) -> tuple[list[np.ndarray], list]:
    """Physics-synthetic training pairs: no real image is used."""
    from emcopilot.specimen.layout import LayoutSpec, sample_layout
    from emcopilot.core.plugins import get_registry

    registry = get_registry()
    rng = np.random.default_rng(seed)
    spec = LayoutSpec.from_sample(sample)
    layouts = [sample_layout(spec, (size_px, size_px), sample.working_pixel_size_nm, rng) for _ in range(count)]
    generator = registry.get("generator", "physical").create({}, sample)
    adapter = registry.get("physics_adapter", sample.modality).create({}, sample)
    clean = generator.generate(layouts, rng)
    images = [adapter.apply(image, sample.working_pixel_size_nm, rng, layout=layout) for image, layout in zip(clean, layouts)]
    return [np.asarray(image, np.float32) for image in images], [layout.instances() for layout in layouts]


# --------------------------------------------------------------------------- evaluation

def score_item(segmenter, item: dict, sample, radius_nm: float, peak_thresholds: list[float] | None = None) -> dict:
    """One held-out image's scores; for atoms also at each of ``peak_thresholds`` (``_sweep``).

    The sweep predicts once at the lowest threshold and keeps the peaks whose
    height reaches each threshold: the same peaks as predicting at it.
    """
    from emcopilot import Micrograph
    from emcopilot.analysis.evaluate import Objects, label_geometry, match, size_distribution

    pixel_size_nm = item.get("pixel_size_nm", sample.working_pixel_size_nm)
    micrograph = Micrograph(item["image"], pixel_size_nm=pixel_size_nm, name=item["name"])
    if "points" in item:
        truth = Objects("points", points=item["points"], pixel_size_nm=pixel_size_nm)
        own = float(segmenter.params["peak_threshold"])
        thresholds = sorted({own, *(peak_thresholds or [])})
        segmenter.params["peak_threshold"] = thresholds[0]
        try:
            prediction = segmenter.predict(micrograph)
        finally:
            segmenter.params["peak_threshold"] = own
        sweep = {}
        for threshold in thresholds:
            keep = prediction.scores >= threshold
            matching = match(Objects("points", points=prediction.points[keep], pixel_size_nm=pixel_size_nm), truth,
                             radius_nm=radius_nm)
            sweep[threshold] = {"n_true": matching.n_true, "n_pred": matching.n_pred, **matching.summary()}
        return {"image": item["name"], **sweep[own], "_sweep": sweep}
    prediction = segmenter.predict(micrograph)
    boxes = item["boxes"]
    matching = match(prediction, Objects("boxes", boxes=boxes))
    true_diameters = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    predicted_diameters = label_geometry(prediction.labels)[2]
    sizes = size_distribution(predicted_diameters, true_diameters)
    return {"image": item["name"], "n_true": matching.n_true, "n_pred": matching.n_pred, **matching.summary(),
            "mean_diameter_rel_error": sizes["mean_diameter_rel_error"], "ks_statistic": sizes["ks_statistic"],
            "_pred_d": predicted_diameters.tolist(), "_true_d": true_diameters.tolist()}


def sweep_pooled(rows: list[dict]) -> list[dict]:
    """Pooled atom scores at each swept peak threshold."""
    from emcopilot.analysis.evaluate import detection_scores

    if not rows or "_sweep" not in rows[0]:
        return []
    return [{"peak_threshold": threshold,
             **detection_scores(*[int(sum(row["_sweep"][threshold][key] for row in rows)) for key in ("tp", "fp", "fn")])}
            for threshold in rows[0]["_sweep"]]


def pooled(rows: list[dict]) -> dict:
    from emcopilot.analysis.evaluate import detection_scores, size_distribution

    totals = [int(sum(row[key] for row in rows)) for key in ("tp", "fp", "fn")]
    out = {"images": len(rows), **detection_scores(*totals),
           "mean_image_f1": float(np.mean([row["f1"] for row in rows]))}
    if rows and "_pred_d" in rows[0]:
        sizes = size_distribution(np.concatenate([row["_pred_d"] for row in rows]),
                                  np.concatenate([row["_true_d"] for row in rows]))
        out.update({key: sizes[key] for key in ("mean_diameter_rel_error", "median_diameter_rel_error",
                                                "ks_statistic", "wasserstein_rel")})
    return out


# --------------------------------------------------------------------------- main

def run_set(set_name: str, args) -> dict:
    import torch

    from emcopilot.core.interfaces import TrainBudget
    from emcopilot.core.plugins import get_registry

    if set_name == "acstem":
        items = load_acstem(args.data)
    else:
        items = load_ardagen(args.data, set_name == "ardagen-bf", 0 if args.oracle_scale else args.max_image_px)
    if args.recipe:
        from emcopilot.core.recipe import load_recipe

        recipe = load_recipe(args.recipe)
        sample, segmenter_name = recipe.sample, recipe.segmenter.plugin
        params = dict(recipe.segmenter.params, device=args.device)
        profile = recipe.profile(args.profile)
        if args.oracle_scale and set_name != "acstem":
            typical_nm = math.sqrt(math.prod(sample.diameter_nm))
            for item in items:
                boxes = item["boxes"]
                box_px = float(np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))))
                item["pixel_size_nm"] = typical_nm / box_px
        budget = TrainBudget(steps=args.steps or int(profile["segmenter_steps"]),
                             batch_size=args.batch_size or int(profile["batch_size"]),
                             crop_px=args.crop_px or int(profile["crop_px"]),
                             max_minutes=args.max_minutes or profile.get("max_minutes"),
                             seed=args.seed, device=args.device, progress=False)
    else:
        sample, segmenter_name = sample_for(set_name, args.ardagen_pixel_size_nm), "unet"
        params = {"depth": args.depth, "width": args.width, "tile_px": args.tile_px, "device": args.device}
        budget = TrainBudget(steps=args.steps or 300, batch_size=args.batch_size or 8, crop_px=args.crop_px or 128,
                             max_minutes=args.max_minutes, seed=args.seed, device=args.device, progress=False)
    started = time.perf_counter()
    rows, folds, histories = [], [], []
    if args.source == "human":
        fold_of = np.arange(len(items)) % min(args.folds, len(items))
        for fold in range(int(fold_of.max()) + 1):
            train = [item for item, f in zip(items, fold_of) if f != fold]
            test = [item for item, f in zip(items, fold_of) if f == fold]
            segmenter = get_registry().get("segmenter", segmenter_name).create(params, sample)
            torch.manual_seed(args.seed)
            histories.append(segmenter.fit(*human_pairs(train, sample), None, budget=budget))
            fold_rows = [score_item(segmenter, item, sample, args.radius_nm, args.peak_thresholds) for item in test]
            folds.append({"fold": fold, "test": [item["name"] for item in test], **pooled(fold_rows)})
            rows += fold_rows
            print(f"  {set_name} fold {fold}: F1 {folds[-1]['f1']:.3f} ({time.perf_counter() - started:.0f} s)",
                  file=sys.stderr)
    else:
        segmenter = get_registry().get("segmenter", segmenter_name).create(params, sample)
        images, labels = synthetic_pairs(sample, args.synthetic_images, args.synthetic_px, args.seed)
        histories.append(segmenter.fit(images, labels, None, budget=budget))
        rows = [score_item(segmenter, item, sample, args.radius_nm, args.peak_thresholds) for item in items]
    result = {"set": set_name, "source": args.source, "images": len(items), "pooled": pooled(rows),
              "peak_threshold_sweep": sweep_pooled(rows), "folds": folds,
              "per_image": [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows],
              "seconds": time.perf_counter() - started,
              "train_seconds": sum(h["seconds"] for h in histories),
              "final_loss": [h["loss"][-1] if h["loss"] else None for h in histories],
              "steps_trained": [h["steps"] for h in histories],
              "stopped_early": [h.get("stopped_early") for h in histories],
              "segmenter_params": params, "budget": {k: getattr(budget, k) for k in
                                                     ("steps", "batch_size", "crop_px", "max_minutes", "seed")},
              "sample": sample.as_dict()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--sets", nargs="+", default=["ardagen-haadf", "ardagen-bf", "acstem"],
                        choices=["ardagen-haadf", "ardagen-bf", "acstem"])
    parser.add_argument("--source", choices=["human", "synthetic"], default="human")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--recipe", help="take the sample, segmenter parameters and budget from this recipe")
    parser.add_argument("--profile", help="the recipe's training profile (default: the recipe's own)")
    parser.add_argument("--steps", type=int, help="training steps (default: the recipe's, else 300)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's, else 8")
    parser.add_argument("--crop-px", type=int, help="default: the recipe's, else 128")
    parser.add_argument("--max-minutes", type=float, help="training cap per fold (default: the recipe's, else none)")
    parser.add_argument("--depth", type=int, default=3, help="without --recipe (a recipe brings its own)")
    parser.add_argument("--width", type=int, default=16, help="without --recipe")
    parser.add_argument("--tile-px", type=int, default=512, help="without --recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--max-image-px", type=int, default=1024, help="ardagen: downsample larger images")
    parser.add_argument("--ardagen-pixel-size-nm", type=float, default=0.3,
                        help="assumed pixel size of the (downsampled) ardagen images")
    parser.add_argument("--oracle-scale", action="store_true",
                        help="with --recipe, ardagen: each image at the scale its human boxes imply (see above)")
    parser.add_argument("--radius-nm", type=float, default=0.1, help="acstem: largest distance of a match")
    parser.add_argument("--peak-thresholds", type=float, nargs="+",
                        help="acstem: also score at these heatmap peak thresholds (the held-out labels choose "
                             "nothing: the recipe's threshold is the reported one)")
    parser.add_argument("--synthetic-images", type=int, default=32)
    parser.add_argument("--synthetic-px", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/supervised_baseline.json"))
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: no such folder")
    import torch
    torch.set_num_threads(args.threads)
    results = {"command": " ".join(sys.argv), "settings": {k: str(v) if isinstance(v, Path) else v
                                                            for k, v in vars(args).items()}, "sets": []}
    for set_name in args.sets:
        result = run_set(set_name, args)
        results["sets"].append(result)
        p = result["pooled"]
        print(f"{set_name:14s} {args.source:9s} images {result['images']:3d}  P {p['precision']:.3f}  "
              f"R {p['recall']:.3f}  F1 {p['f1']:.3f}  mean-image F1 {p['mean_image_f1']:.3f}  "
              f"d_err {p.get('mean_diameter_rel_error', float('nan')):+.3f}  {result['seconds']:.0f} s")
        for row in result["peak_threshold_sweep"]:
            print(f"  peak threshold {row['peak_threshold']:g}: P {row['precision']:.3f}  R {row['recall']:.3f}  "
                  f"F1 {row['f1']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
