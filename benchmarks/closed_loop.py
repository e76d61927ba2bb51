"""Accuracy and wall time of the whole label-free loop (``emcopilot run``) on annotated micrographs.

Runs a built-in recipe, unchanged, on one development set with the ``fast``
profile, as a user would (``emcopilot run RECIPE --input DIR --out RUN``, timed
as a whole process), then scores ``RUN/particles.csv`` against the human labels
with ``emcopilot evaluate``. The labels are read only by the scoring step.

- ``ardagen-haadf``: the 16 HAADF images of ``ardagen-dev`` (YOLO boxes, IoU >= 0.5);
- ``ardagen-bf``: its 4 bright-field images;
- ``acstem``: the 11 ``acstem-dev`` images (clicked atom centres, matched within 0.1 nm).

Usage::

    python benchmarks/closed_loop.py [DATA] --set ardagen-haadf|ardagen-bf|acstem \
        [--recipe NAME_OR_YAML] [--work DIR] [--out results/closed_loop.json]

Writes JSON (pooled and per-image scores, per-stage times from ``run.json``,
the targets) and prints a summary line. ``--work`` keeps the run directory;
running again with the same ``--work`` resumes finished stages (so the wall
time then measures only what was redone).

``--oracle-scale`` is the error budget's "scale known" row: each particle image
gets, through ``--calibration``, the pixel size at which its median human box
spans the recipe's typical diameter (the geometric mean of ``diameter_nm``), so
the loop is run as if the scale were known and nothing else changes. The labels
then enter the run (as the scale only); the figure is a diagnostic, not a
label-free result. (The single-atom images carry their calibration already.)

``--human-priors`` is the error budget's "priors from the human labels" row: the
human boxes (inscribed ellipses) or clicked atoms (disks of ``ATOM_RADIUS_NM``)
are written as label images and given to the run with ``--priors-from``, so the
morphology prior, the fitted contrast and the synthetic training set come from
the human outlines; the scale is still estimated. ``--budget F`` runs the
recipe with its training profile's ``synthetic_images``, ``segmenter_steps``
and ``max_minutes`` multiplied by F (a recipe derived from it, written into the
work folder).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BF_IMAGES = {"PtC1", "PtCo1", "PtCo3", "Pt_carbon1"}
ACSTEM_PIXEL_SIZE_NM = 0.029297
ATOM_RADIUS_NM = 0.1
#: set -> (data folder, built-in recipe, targets of the closed-loop acceptance)
SETS = {
    "ardagen-haadf": ("ardagen-dev", "nanoparticles-haadf",
                      {"f1_min": 0.60, "mean_diameter_abs_rel_error_max": 0.10, "classical_reference_f1": 0.25}),
    "ardagen-bf": ("ardagen-dev", "nanoparticles-bf-stem", {}),
    "acstem": ("acstem-dev", "single-atom-catalyst-haadf", {"f1_min": 0.70, "classical_reference_f1": 0.47}),
}


def select_images(data: Path, name: str) -> list[Path]:
    folder, _, _ = SETS[name]
    images = sorted(p for p in (data / folder / "images").iterdir() if p.is_file())
    if name == "ardagen-haadf":
        images = [p for p in images if p.stem not in BF_IMAGES]
    elif name == "ardagen-bf":
        images = [p for p in images if p.stem in BF_IMAGES]
    if not images:
        raise SystemExit(f"no images for set {name} under {data / folder / 'images'}")
    return images


def evaluate_args(data: Path, name: str, predictions: Path, report: Path) -> list[str]:
    folder, _, _ = SETS[name]
    args = ["evaluate", "--pred", str(predictions), "--truth", str(data / folder / "labels"), "--json", str(report)]
    if name == "acstem":
        return args + ["--format", "points", "--radius-nm", str(ATOM_RADIUS_NM),
                       "--pixel-size-nm", str(ACSTEM_PIXEL_SIZE_NM)]
    return args + ["--format", "yolo", "--images", str(data / folder / "images")]


def oracle_calibration(data: Path, name: str, recipe: str, images: list[Path], path: Path) -> Path:
    """A calibration table giving each image the pixel size its median human box implies."""
    import math

    import numpy as np
    from emcopilot.analysis.evaluate import read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.core.recipe import load_recipe

    typical_nm = math.sqrt(math.prod(load_recipe(recipe).sample.diameter_nm))
    lines = ["image,pixel_size_nm"]
    for image in images:
        shape = read_micrograph(image)[0].shape
        boxes = read_yolo_truth(data / SETS[name][0] / "labels" / f"{image.stem}.txt", shape)
        box_px = float(np.median(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))))
        lines.append(f"{image.name},{typical_nm / box_px:.6g}")
    path.write_text("\n".join(lines) + "\n")
    return path


def human_priors(data: Path, name: str, images: list[Path], folder: Path) -> Path:
    """Label TIFFs of the human annotations, named as a run's ``masks/``, for ``--priors-from``."""
    import numpy as np
    import tifffile
    from emcopilot.analysis.evaluate import read_points_truth, read_yolo_truth
    from emcopilot.io.readers import read_micrograph
    from emcopilot.analysis.measure import mask_file_name
    from skimage.draw import disk
    from supervised_baseline import ellipse_labels

    folder.mkdir(parents=True, exist_ok=True)
    labels_dir = data / SETS[name][0] / "labels"
    for image in images:
        micrograph = read_micrograph(image)[0]
        if name == "acstem":
            labels = np.zeros(micrograph.shape, np.int32)
            radius_px = ATOM_RADIUS_NM / (micrograph.pixel_size_nm or ACSTEM_PIXEL_SIZE_NM)
            points = read_points_truth(labels_dir / f"{image.name.split('_')[0]}_Results.csv")
            for index, (row, column) in enumerate(points, 1):
                labels[disk((row, column), radius_px, shape=labels.shape)] = index
        else:
            labels = ellipse_labels(read_yolo_truth(labels_dir / f"{image.stem}.txt", micrograph.shape),
                                    micrograph.shape)
        tifffile.imwrite(folder / mask_file_name(micrograph.name), labels)
    return folder


def budget_recipe(recipe: str, factor: float, path: Path) -> Path:
    """A recipe derived from ``recipe`` whose training profile has ``factor`` times the budget."""
    import yaml
    from emcopilot.core.recipe import load_recipe

    base = load_recipe(recipe)
    profile_name = base.train["profile"]
    profile = dict(base.profile(profile_name))
    for key in ("synthetic_images", "segmenter_steps", "max_minutes"):
        if profile.get(key) is not None:
            profile[key] = int(round(profile[key] * factor)) if key != "max_minutes" else profile[key] * factor
    derived = {"name": f"{base.name}-budget-x{factor:g}", "base": recipe if "/" not in recipe else str(Path(recipe).resolve()),
               "train": {"profiles": {profile_name: profile}}}
    path.write_text(yaml.safe_dump(derived, sort_keys=False))
    return path


def emcopilot(*args: str, log=None) -> None:
    command = [sys.executable, "-m", "emcopilot", *args]
    completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT if log else None, text=True,
                               check=False)
    if completed.returncode not in (0, 3):  # 3: some inputs failed, the rest was measured
        raise SystemExit(f"{' '.join(command)} exited with {completed.returncode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                        help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--recipe", help="recipe name or YAML (default: the set's built-in recipe)")
    parser.add_argument("--work", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--out", help="JSON report (default: stdout only)")
    parser.add_argument("--oracle-scale", action="store_true",
                        help="diagnostic: each image's pixel size from its human boxes (see above)")
    parser.add_argument("--human-priors", action="store_true",
                        help="diagnostic: the human labels as the run's priors (see above)")
    parser.add_argument("--budget", type=float, default=1.0, metavar="F",
                        help="multiply the training profile's images, steps and time cap by F")
    args = parser.parse_args(argv)

    data = Path(args.data)
    _, recipe, targets = SETS[args.set]
    recipe = args.recipe or recipe
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="emcopilot-closed-loop-"))
    inputs = work / "inputs"
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir(parents=True)
    images = select_images(data, args.set)
    for image in images:  # the run sees exactly this set, under the images' own names
        (inputs / image.name).symlink_to(image.resolve())
    run = work / "run"
    extra = []
    if args.oracle_scale and args.set != "acstem":
        extra = ["--calibration", str(oracle_calibration(data, args.set, recipe, images, work / "oracle.csv"))]
    if args.human_priors:
        extra += ["--priors-from", str(human_priors(data, args.set, images, work / "human-priors"))]
    if args.budget != 1.0:
        recipe = str(budget_recipe(recipe, args.budget, work / "budget-recipe.yaml"))
    with open(work / "run.log", "w") as log:
        started = time.perf_counter()
        emcopilot("run", recipe, "--input", str(inputs), "--out", str(run), "--no-progress", *extra, log=log)
        wall_s = time.perf_counter() - started
    report = work / "evaluation.json"
    with open(work / "evaluate.log", "w") as log:
        emcopilot(*evaluate_args(data, args.set, run / "particles.csv", report), log=log)
    evaluation = json.loads(report.read_text())
    provenance = json.loads((run / "run.json").read_text())
    pooled = evaluation["pooled"]
    result = {
        "set": args.set, "recipe": recipe, "oracle_scale": "--calibration" in extra,
        "human_priors": args.human_priors, "budget": args.budget, "images": len(images), "profile": provenance.get("profile"),
        "wall_time_s": round(wall_s, 1), "stage_times_s": provenance.get("timings_s"),
        "stages_reused": provenance.get("stages_reused"),
        "pooled": pooled, "per_image": evaluation.get("images"), "targets": targets,
        "work": str(work),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    size = pooled.get("mean_diameter_rel_error")
    size_text = f", mean-diameter error {100 * size:+.1f} %" if isinstance(size, (int, float)) else ""
    print(f"{args.set} ({recipe}, {len(images)} images): F1 {pooled['f1']:.3f} (precision "
          f"{pooled['precision']:.3f}, recall {pooled['recall']:.3f}){size_text}; wall {wall_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
