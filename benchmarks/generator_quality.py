"""Generator quality on real HAADF micrographs: pix2pix vs the analytic renderer vs the real floor.

Data: the HAADF images of ``ardagen-dev`` (the bright-field ones, PtC1, PtCo1,
PtCo3 and Pt_carbon1, are excluded). The files carry no calibration, so every
image is rescaled so that the median size of its annotated particle boxes is
``--diameter-px`` pixels: a common working scale, as the recipe's working
pixel size would give. The annotations serve for this scale only.

Pairs: each image with the instance masks of the recipe's prior extractor
(``classical``) when it is installed, else a documented stand-in (white
top-hat, Otsu threshold, connected components).

Split: the top ``1 - --test-fraction`` of every image's rows trains (pix2pix
holds back the bottom of that part for its own validation and checkpoint
selection); the bottom band is never seen in training and is cut into
``--crop-px`` test crops. On the test crops' masks each method renders an image,
scored against the real crop:

- (a) pix2pix, checkpoint selected by SSIM; (b) pix2pix selected by LPIPS when
  its weights are in the torch cache, else by the realism gap;
  (a+adapter)/(b+adapter): the same through the fitted ``haadf-stem`` adapter
  (noise and scan effects on top, psf off: the generator learned the blur);
- (c) the analytic ``physical`` generator (fitted contrast) + fitted ``haadf-stem``;
- (d) real vs real: the realism gap between two halves of the test crops, and
  SSIM/PSNR between unrelated real crops (the chance level of a paired score).

Metrics (SSIM, PSNR, realism gap, LPIPS when available) compare normalised
intensities (1st..99th percentile -> 0..1 per image; see the metrics module).

    python benchmarks/generator_quality.py [DATA] [--out benchmarks/results/generator_quality.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BRIGHT_FIELD = ("PtC1", "PtCo1", "PtCo3", "Pt_carbon1")
#: Atomic numbers of the metals by file-name prefix (for the analytic renderer; PtCo/PtW as Pt).
MATERIAL_Z = {"Cu": 29, "Pd": 46, "Pt": 78, "Ru": 44}
#: Mean atomic number of the supports (SiO2: (14 + 2*8)/3 = 10; amorphous carbon: 6).
SUPPORT_Z = {"silica": 10, "carbon": 6}
#: The set's particles are 1.6-9.7 nm (Genc et al. 2025); a nominal 4 nm median sets the working pixel size.
DIAMETER_RANGE_NM = (1.6, 9.7)
NOMINAL_DIAMETER_NM = 4.0
#: The budget of the built-in recipes' CPU ``fast`` profile, used when the recipe cannot be loaded.
FALLBACK_PROFILE = {"generator_steps": 300, "batch_size": 8, "crop_px": 128}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", default="../shared/data", help="the shared data folder")
    parser.add_argument("--out", default="benchmarks/results/generator_quality.json")
    parser.add_argument("--png", action="store_true", help="also write a montage PNG next to the JSON")
    parser.add_argument("--recipe", default="nanoparticles-haadf-gan", help="recipe giving the pix2pix params and budget")
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--steps", type=int, help="override the profile's generator_steps")
    parser.add_argument("--width", type=int, default=16, help="pix2pix width (narrow net for CPU)")
    parser.add_argument("--validate-every", type=int, default=50)
    parser.add_argument("--diameter-px", type=float, default=16.0, help="working scale: median particle size")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--test-crops-per-image", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (2 only on an idle machine)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- data

def load_images(folder: Path, diameter_px: float, min_rows: int, min_cols: int,
                skipped: list[str]) -> list[dict]:
    """HAADF images rescaled to the working scale, with their material and support.

    Images smaller than ``min_rows`` x ``min_cols`` at that scale are listed in ``skipped``.
    """
    from skimage.transform import rescale

    from emcopilot.io.readers import read_micrograph

    images = []
    for path in sorted((folder / "images").glob("*.jpg")):
        if path.stem in BRIGHT_FIELD:
            continue
        boxes = np.loadtxt(folder / "labels" / f"{path.stem}.txt", ndmin=2)
        pixels = read_micrograph(path)[0].data
        rows, cols = pixels.shape
        median_box_px = float(np.median(np.sqrt(boxes[:, 3] * cols * boxes[:, 4] * rows)))
        scale = diameter_px / median_box_px
        data = rescale(pixels, scale, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        if data.shape[0] < min_rows or data.shape[1] < min_cols:
            skipped.append(f"{path.stem}: {data.shape[0]}x{data.shape[1]} px at the working scale, "
                           f"needs {min_rows}x{min_cols} for training, validation and test crops")
            continue
        metal = next(z for prefix, z in MATERIAL_Z.items() if path.stem.startswith(prefix))
        support = next((z for name, z in SUPPORT_Z.items() if name in path.stem), SUPPORT_Z["carbon"])
        images.append({"name": path.stem, "data": data, "scale": scale, "material_z": metal, "support_z": support})
    return images


def stand_in_masks(image: np.ndarray, diameter_px: float) -> np.ndarray:
    """White top-hat (disk of the particle diameter) + Otsu + connected components.

    The top-hat keeps bright features smaller than the disk (particles) and
    removes the support's slow variation; objects smaller than a quarter of
    the typical particle area are dropped.
    """
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label
    from skimage.morphology import disk, white_tophat
    from skimage.segmentation import relabel_sequential

    smooth = gaussian(image, sigma=1.0, preserve_range=True)
    tophat = white_tophat(smooth, disk(int(round(diameter_px)), decomposition="sequence"))
    labels = label(tophat > threshold_otsu(tophat))
    small = np.bincount(labels.ravel()) < np.pi * (diameter_px / 4) ** 2
    small[0] = False
    labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def prior_masks(images: list[dict], diameter_px: float, pixel_size_nm: float) -> str:
    """Fill each image's ``labels``; return which extractor made them."""
    from emcopilot.core.errors import PluginError
    from emcopilot.core.interfaces import Micrograph
    from emcopilot.core.plugins import get_registry

    try:
        extractor = get_registry().get("prior_extractor", "classical").create(
            {"min_diameter_nm": DIAMETER_RANGE_NM[0], "max_diameter_nm": DIAMETER_RANGE_NM[1]})
    except PluginError:
        extractor = None
    for image in images:
        if extractor is None:
            image["labels"] = stand_in_masks(image["data"], diameter_px)
        else:
            micrograph = Micrograph(image["data"], pixel_size_nm=pixel_size_nm, name=image["name"])
            image["labels"] = extractor.extract(micrograph).labels
    return "classical" if extractor is not None else "stand-in (top-hat + Otsu + label)"


def split(images: list[dict], test_fraction: float, crop_px: int, per_image: int, rng) -> list[dict]:
    """Training part (top rows) per image and test crops from the bottom band (flat crops left out)."""
    from skimage.measure import label

    crops = []
    for image in images:
        rows = image["data"].shape[0]
        first_test_row = rows - max(crop_px, int(round(test_fraction * rows)))
        image["train_rows"] = first_test_row
        tiles = [(r, c) for r in range(first_test_row, rows - crop_px + 1, crop_px)
                 for c in range(0, image["data"].shape[1] - crop_px + 1, crop_px)
                 if np.ptp(np.percentile(image["data"][r:r + crop_px, c:c + crop_px], [1, 99])) > 0]  # not flat
        tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), size=min(per_image, len(tiles)), replace=False))]
        for r, c in tiles:
            crops.append({"image": image["name"], "row": r, "col": c,
                          "real": image["data"][r:r + crop_px, c:c + crop_px],
                          "labels": label(image["labels"][r:r + crop_px, c:c + crop_px] > 0).astype(np.int32),
                          "material_z": image["material_z"], "support_z": image["support_z"]})
    return crops


# --------------------------------------------------------------------------- methods

def layout_of(crop: dict, pixel_size_nm: float):
    """A Layout for the analytic renderer from a crop's mask: sphere-model thickness."""
    from emcopilot.specimen.layout import Layout
    from emcopilot_plugins.generators.pix2pix.data import condition_channels

    labels = crop["labels"]
    relative = condition_channels(labels, boundary=False, thickness=True)[1]
    areas = np.bincount(labels.ravel())
    diameter_px = 2 * np.sqrt(areas / np.pi)  # equivalent diameter per label
    thickness_nm = (relative * diameter_px[labels] * pixel_size_nm).astype(np.float32)
    z_map = np.where(labels > 0, crop["material_z"], crop["support_z"]).astype(np.float32)
    return Layout(labels=labels, thickness_nm=thickness_nm, z_map=z_map, pixel_size_nm=pixel_size_nm,
                  kind="particles", support_z=crop["support_z"])


def score(name: str, synthetic: list[np.ndarray], real: list[np.ndarray], metrics: dict) -> dict:
    result = {"method": name, "crops": len(synthetic)}
    for metric in metrics.values():
        result.update({k: v for k, v in metric(synthetic, real).items() if k != "pairs"})
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from emcopilot.core.interfaces import Micrograph, TrainBudget
    from emcopilot.core.plugins import get_registry
    from emcopilot.core.recipe import load_recipe
    from emcopilot_plugins.metrics.image import LPIPS, PSNR, SSIM, RealismGap
    from emcopilot.core.errors import CheckpointError, InputError, RecipeError

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    timings = {}
    rng = np.random.default_rng(args.seed)
    folder = Path(args.data) / "ardagen-dev"
    if not folder.is_dir():
        print(f"error: {folder} not found (pass the shared data folder)", file=sys.stderr)
        return 2
    try:
        recipe = load_recipe(args.recipe)
        profile, generator_params = recipe.profile(args.profile), dict(recipe.generator.params)
        recipe_note = f"{args.recipe}, profile {args.profile}"
    except RecipeError as error:  # e.g. a plugin the recipe names is not installed
        profile, generator_params = FALLBACK_PROFILE, {}
        recipe_note = f"recipe unavailable ({error}); used {FALLBACK_PROFILE}"
        print(f"warning: {recipe_note}", file=sys.stderr)
    crop_px = profile["crop_px"]
    pixel_size_nm = NOMINAL_DIAMETER_NM / args.diameter_px

    skipped: list[str] = []
    test_rows = crop_px  # at least one test crop; pix2pix needs 2 crops of rows to train and validate
    images = load_images(folder, args.diameter_px, int(np.ceil(max(3 * crop_px, test_rows / args.test_fraction))),
                         crop_px, skipped)
    masks_from = prior_masks(images, args.diameter_px, pixel_size_nm)
    crops = split(images, args.test_fraction, crop_px, args.test_crops_per_image, rng)
    timings["data_s"] = time.perf_counter() - started
    print(f"data: {len(images)} images, {len(crops)} test crops, masks from {masks_from} "
          f"({timings['data_s']:.0f} s)", file=sys.stderr)
    reals = [crop["real"] for crop in crops]
    train_labels = [image["labels"][:image["train_rows"]] for image in images]
    train_images = [Micrograph(image["data"][:image["train_rows"]], name=image["name"]) for image in images]

    metrics = {"ssim": SSIM(), "psnr": PSNR(), "realism_gap": RealismGap()}
    try:
        metrics["lpips"] = LPIPS()
        lpips_status = "available"
    except CheckpointError as error:
        lpips_status = f"unavailable: {error}"
    registry = get_registry()

    # pix2pix -------------------------------------------------------------
    tick = time.perf_counter()
    params = dict(generator_params, width=args.width, validate_every=args.validate_every)
    budget = TrainBudget(steps=args.steps or profile["generator_steps"], batch_size=profile["batch_size"],
                         crop_px=crop_px, seed=args.seed, device=args.device, progress=False)
    pix2pix = registry.get("generator", "pix2pix").create(params)
    workdir = Path(tempfile.mkdtemp(prefix="generator_quality_"))
    history = pix2pix.fit(train_labels, train_images, workdir, budget=budget)
    timings["pix2pix_fit_s"] = time.perf_counter() - tick
    print(f"pix2pix: {budget.steps} steps in {timings['pix2pix_fit_s']:.0f} s", file=sys.stderr)
    second = "lpips" if "lpips" in history["best"] else "realism-gap"
    rendered = {}
    for selection in ("ssim", second):
        pix2pix.load(workdir / f"best-{selection}")
        rendered[selection] = pix2pix.generate([crop["labels"] for crop in crops], np.random.default_rng(args.seed))

    # physical + adapter --------------------------------------------------
    tick = time.perf_counter()
    physical = registry.get("generator", "physical").create({"modality": "haadf-stem"})
    physical_fit = physical.fit(train_labels, train_images)
    adapter = registry.get("physics_adapter", "haadf-stem").create({})
    adapter.fit(train_images)
    clean = physical.generate([layout_of(crop, pixel_size_nm) for crop in crops], np.random.default_rng(args.seed))
    physical_images = [adapter.apply(image, pixel_size_nm, np.random.default_rng(args.seed + index))
                       for index, image in enumerate(clean)]
    learned_adapter = registry.get("physics_adapter", "haadf-stem").create({"clean_units": "detector",
                                                                           "apply_psf": False})
    learned_adapter.restore(adapter.fitted)
    timings["physical_s"] = time.perf_counter() - tick

    # scores --------------------------------------------------------------
    tick = time.perf_counter()
    rows = [score(f"(a) pix2pix, selected by ssim (step {history['best']['ssim']['step']})",
                  rendered["ssim"], reals, metrics),
            score(f"(b) pix2pix, selected by {second} (step {history['best'][second]['step']})",
                  rendered[second], reals, metrics)]
    for label, selection in (("(a+adapter)", "ssim"), ("(b+adapter)", second)):
        noisy, refused = [], 0
        for index, image in enumerate(rendered[selection]):
            try:
                noisy.append(learned_adapter.apply(image, pixel_size_nm, np.random.default_rng(args.seed + index)))
            except InputError:  # e.g. a vacuum crop rendered below the fitted detector offset
                noisy.append(image)
                refused += 1
        rows.append(score(f"{label} pix2pix selected by {selection} + fitted haadf-stem adapter", noisy, reals,
                          metrics) | {"adapter_refused_crops": refused})
    rows.append(score("(c) physical + fitted haadf-stem adapter", physical_images, reals, metrics))
    half_a, half_b = reals[0::2], reals[1::2]
    count = min(len(half_a), len(half_b))
    rows.append(score("(d) real vs real (two halves of the test crops; SSIM/PSNR of unrelated crops)",
                      half_a[:count], half_b[:count], metrics))
    timings["scoring_s"] = time.perf_counter() - tick
    timings["total_s"] = time.perf_counter() - started

    report = {
        "benchmark": "generator_quality",
        "command": " ".join(["python"] + sys.argv),
        "data": str(folder), "images": [{k: image[k] for k in ("name", "scale", "train_rows")} |
                                        {"shape": list(image["data"].shape),
                                         "objects": int(image["labels"].max())} for image in images],
        "recipe": recipe_note, "skipped_images": skipped, "masks_from": masks_from, "diameter_px": args.diameter_px,
        "test_crops": len(crops), "crop_px": crop_px, "lpips": lpips_status,
        "pix2pix": {"params": params, "budget": {k: getattr(budget, k) for k in
                                                ("steps", "batch_size", "crop_px", "seed", "device")},
                    "steps_per_second": history["steps_per_second"], "device": history["device"],
                    "best": history["best"], "validation": history["validation"],
                    "loss_l1_mean_first_last_20_steps": [float(np.mean(history["loss_l1"][:20])),
                                                         float(np.mean(history["loss_l1"][-20:]))]},
        "physical_fit": physical_fit,
        "results": rows, "timings_s": timings, "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    for row in rows:
        print(f"{row['method']}: SSIM {row['ssim']:.3f}  PSNR {row['psnr_dB']:.2f} dB  realism gap "
              f"{row['realism_gap']:.3f} (spectrum {row['realism_gap_spectrum']:.3f}, histogram "
              f"{row['realism_gap_histogram']:.3f}, noise {row['realism_gap_noise']:.3f})"
              + (f"  LPIPS {row['lpips']:.3f}" if "lpips" in row else ""))
    print(f"pix2pix {history['steps_per_second']:.2f} steps/s on {history['device']}; total {timings['total_s']:.0f} s;"
          f" masks: {masks_from}; wrote {out}")
    if args.png:
        write_montage(out.with_suffix(".png"), crops, rendered, physical_images, second)
    return 0


def write_montage(path: Path, crops: list[dict], rendered: dict, physical_images: list, second: str) -> None:
    """Rows: real, mask, pix2pix (ssim), pix2pix (second), physical+adapter; 8 crops."""
    import imageio.v3 as iio

    from emcopilot_plugins.metrics.image import normalise_intensity

    picks = np.linspace(0, len(crops) - 1, min(8, len(crops))).astype(int)
    rows = [[crops[i]["real"] for i in picks], [(crops[i]["labels"] > 0).astype(float) for i in picks],
            [rendered["ssim"][i] for i in picks], [rendered[second][i] for i in picks],
            [physical_images[i] for i in picks]]
    grid = np.concatenate([np.concatenate([np.clip(normalise_intensity(tile), 0, 1) for tile in row], axis=1)
                           for row in rows], axis=0)
    iio.imwrite(path, (grid * 255).astype(np.uint8))


if __name__ == "__main__":
    sys.exit(main())
