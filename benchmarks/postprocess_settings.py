"""Settle the U-Net's particle post-processing on annotated micrographs, with images left out.

The network's two maps (foreground and normalised distance) are computed once
per image with a trained model of a closed-loop run (``benchmarks/closed_loop.py
--work DIR``), at the pixel size that run used for each image; then every
combination of ``foreground_threshold``, ``seed_dynamic``, ``grow_nm``, ``min_score`` and
``min_diameter_nm`` (0: the model's own) is
turned into particles and scored against the human boxes (box IoU >= 0.5).

Two figures per setting: pooled over all images, and the leave-one-image-out
figure of the selection rule itself: for each image, the setting that scores
best on the *other* images is applied to it, and those held-out counts are
pooled. A setting worth shipping in a recipe keeps the two close.

Several runs (e.g. the HAADF and the BF set) can be given together; they are
then settled as one set of images, as a recipe and the recipes built on it
share these settings.

Usage::

    python benchmarks/postprocess_settings.py [DATA] --run ardagen-haadf:WORK_HAADF --run ardagen-bf:WORK_BF \
        [--foreground 0.25 0.3 0.5] [--seed-dynamic 0.1 0.2] [--grow-nm 0 0.2] [--min-score 0 0.5] \
        [--min-diameter-nm 0 1.0] [--out settings.json]

Writes JSON (per setting: pooled counts and F1, per image; the held-out
choice for each image and the pooled held-out F1) and prints the best settings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from closed_loop import SETS, select_images  # noqa: E402


def maps_of_run(data: Path, name: str, work: Path, flips: int | None, cache: Path | None = None) -> list[dict]:
    """Each image of the set with the run's model's maps at the run's pixel size (kept in, and
    read back from, ``cache/<set>/<image>.npy`` when a cache folder is given)."""
    from emcopilot.pipeline.models import load_model
    from emcopilot.analysis.evaluate import read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.specimen.scale import plan_scaling, to_working
    from emcopilot_plugins.segmenters.unet import normalise

    run = work / "run"
    calibration = json.loads(next((run / "stages").glob("extract@*/calibration.json")).read_text())
    segmenter = load_model(run / "model", None, params={"test_time_flips": flips} if flips else None)
    items = []
    for path in select_images(data, name):
        micrograph = read_micrograph(path)[0]
        pixel_size = calibration[path.name]["pixel_size_nm"]
        scaling = plan_scaling(micrograph.shape, pixel_size, segmenter.working_pixel_size_nm, path.name)
        cached = cache / name / f"{path.name}.npy" if cache else None
        if cached and cached.is_file():
            maps = np.load(cached)
        else:
            maps = segmenter.predict_maps(normalise(to_working(micrograph.data, scaling), **segmenter.normalisation))
            if cached:
                cached.parent.mkdir(parents=True, exist_ok=True)
                np.save(cached, maps)
        truth = read_yolo_truth(data / SETS[name][0] / "labels" / f"{path.stem}.txt", micrograph.shape)
        items.append({"image": path.name, "set": name, "maps": maps, "scaling": scaling, "truth": truth,
                      "working_px_nm": segmenter.working_pixel_size_nm,
                      "min_diameter_nm": segmenter.params["min_diameter_nm"] or 0.5 * segmenter.sample.diameter_nm[0]})
        print(f"  maps of {path.name} ({name})", file=sys.stderr, flush=True)
    return items


def counts(item: dict, foreground: float, dynamic: float, grow_nm: float, min_score: float = 0.0,
           min_diameter_nm: float | None = None) -> tuple[int, int, int]:
    from skimage.measure import regionprops
    from emcopilot.analysis.evaluate import Objects, match
    from emcopilot.specimen.scale import labels_to_original
    from emcopilot_plugins.segmenters.instances import particles_from_maps

    px = item["working_px_nm"]
    labels, _ = particles_from_maps(item["maps"][0], item["maps"][1], foreground_threshold=foreground,
                                    seed_dynamic=dynamic, grow_px=grow_nm / px, min_score=min_score,
                                    min_area_px=math.pi / 4 * ((min_diameter_nm or item["min_diameter_nm"]) / px) ** 2)
    labels = labels_to_original(labels, item["scaling"])
    boxes = np.array([[r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]] for r in regionprops(labels)],
                     float).reshape(-1, 4)
    matching = match(Objects("boxes", boxes=boxes), Objects("boxes", boxes=item["truth"]))
    return matching.tp, matching.fp, matching.fn


def f1(tp: float, fp: float, fn: float) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--run", action="append", required=True, metavar="SET:WORK",
                        help="a particle set and the --work folder of its closed-loop run (repeatable)")
    parser.add_argument("--foreground", type=float, nargs="+", default=[0.2, 0.25, 0.3, 0.4, 0.5])
    parser.add_argument("--seed-dynamic", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--grow-nm", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--min-score", type=float, nargs="+", default=[0.0])
    parser.add_argument("--min-diameter-nm", type=float, nargs="+", default=[0.0],
                        help="0: the model's own min_diameter_nm")
    parser.add_argument("--flips", type=int, help="test-time flips for the maps (default: the model's own)")
    parser.add_argument("--cache", help="folder to keep the maps in between invocations (same runs, same flips)")
    parser.add_argument("--out", help="JSON report")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    items = []
    for spec in args.run:
        name, _, work = spec.partition(":")
        if name not in SETS or name == "acstem" or not work:
            raise SystemExit(f"--run {spec!r}: expected ardagen-haadf:DIR or ardagen-bf:DIR")
        items += maps_of_run(Path(args.data), name, Path(work), args.flips, Path(args.cache) if args.cache else None)
    settings = list(itertools.product(args.foreground, args.seed_dynamic, args.grow_nm, args.min_score,
                                      args.min_diameter_nm))
    table = np.array([[counts(item, *setting) for setting in settings] for item in items], float)  # image, setting, 3

    def best_on(rows: np.ndarray) -> int:
        return int(np.argmax([f1(*table[rows, s].sum(0)) for s in range(len(settings))]))

    everything = np.arange(len(items))
    held_out, choices = np.zeros(3), []
    for index in everything:
        choice = best_on(everything[everything != index])
        choices.append(choice)
        held_out += table[index, choice]
    best = best_on(everything)
    key = ("foreground_threshold", "seed_dynamic", "grow_nm", "min_score", "min_diameter_nm")
    result = {
        "runs": args.run, "images": [item["image"] for item in items],
        "settings": [{**dict(zip(key, setting)), "tp": int(t[0]), "fp": int(t[1]), "fn": int(t[2]), "f1": f1(*t),
                      "per_image_f1": {item["image"]: f1(*table[i, s]) for i, item in enumerate(items)}}
                     for s, (setting, t) in enumerate(zip(settings, table.sum(0)))],
        "best": dict(zip(key, settings[best])), "best_f1": f1(*table[:, best].sum(0)),
        "held_out": {"f1": f1(*held_out), "tp": int(held_out[0]), "fp": int(held_out[1]), "fn": int(held_out[2]),
                     "choices": {item["image"]: dict(zip(key, settings[c])) for item, c in zip(items, choices)}},
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    for run_name in sorted({item["set"] for item in items}):
        rows = np.array([i for i, item in enumerate(items) if item["set"] == run_name])
        result.setdefault("per_set", {})[run_name] = {
            "best_f1": f1(*table[rows, best].sum(0)),
            "held_out_f1": f1(*sum(table[i, choices[i]] for i in rows))}
    for s in np.argsort([-r["f1"] for r in result["settings"]])[:5]:
        r = result["settings"][s]
        print(f"foreground {r['foreground_threshold']:.2f}  seed_dynamic {r['seed_dynamic']:.2f}  "
              f"grow {r['grow_nm']:.2f} nm  min_score {r['min_score']:.2f}  min_diameter {r['min_diameter_nm']:.2f} nm: F1 {r['f1']:.3f} (tp {r['tp']}, fp {r['fp']}, fn {r['fn']})")
    print(f"held out, one image at a time: F1 {result['held_out']['f1']:.3f}; per set: "
          + ", ".join(f"{k} best {v['best_f1']:.3f} held-out {v['held_out_f1']:.3f}" for k, v in result["per_set"].items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
