"""Throughput of segmentation (megapixels/s), U-Net side by side with the baselines.

Frames are physics-synthetic HAADF micrographs (``emcopilot.specimen.layout`` +
``physical`` generator + ``haadf-stem`` adapter) of each ``--sizes`` side, at
the recipe's working pixel size (no resampling). Each segmenter is timed on
the full ``predict`` call plus the particle table (``emcopilot.analysis.measure``) when
that module is present, i.e. the per-image work of ``emcopilot segment``.

- ``unet``: the model in ``--model`` (a saved model folder), or else a U-Net with
  the recipe's default architecture trained for ``--train-steps`` on synthetic
  images (the weights matter little for speed, but a trained network gives
  realistic post-processing work);
- ``classical``: the classical prior extractor behind the segmenter interface;
- ``unet_no_flips``: the same model with ``test_time_flips=1`` (one pass per tile);
- ``sam``: the SAM prior extractor, only where a checkpoint is configured;
- ``sam_auto_vit_b`` (``--sam-auto``): what a user would run instead, Segment
  Anything's own ``SamAutomaticMaskGenerator`` (32x32 point grid, its defaults)
  on the real ViT-B architecture with randomly initialised weights (seeded): the
  same computation as the trained weights, so the same time for the image
  encoder and the point-prompted decoder; the masks it keeps differ (random
  weights pass few of its quality filters), which only shortens its own
  post-processing, so its time is if anything an underestimate.

The JSON ends with ``ratios``: each contender's seconds per frame over the
U-Net's, per size.

    python benchmarks/segment_throughput.py --sizes 1024 4096 --out benchmarks/results/segment_throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def synthetic_frame(sample, size: int, seed: int) -> np.ndarray:
    from emcopilot.specimen.layout import LayoutSpec, sample_layout
    from emcopilot.core.plugins import get_registry

    rng = np.random.default_rng(seed)
    block = min(size, 1024)
    layout = sample_layout(LayoutSpec.from_sample(sample), (block, block), sample.working_pixel_size_nm, rng)
    clean = get_registry().get("generator", "physical").create({}, sample).generate([layout], rng)[0]
    image = get_registry().get("physics_adapter", "haadf-stem").create({}, sample).apply(
        clean, sample.working_pixel_size_nm, rng, layout=layout)
    reps = -(-size // block)
    return np.tile(np.asarray(image, np.float32), (reps, reps))[:size, :size], layout


def trained_unet(sample, steps: int, device: str, seed: int):
    from emcopilot.core.interfaces import TrainBudget
    from emcopilot.core.plugins import get_registry

    segmenter = get_registry().get("segmenter", "unet").create({"device": device}, sample)
    frames = [synthetic_frame(sample, 256, seed + index) for index in range(4)]
    segmenter.fit([f[0] for f in frames], [f[1].instances() for f in frames], None,
                  budget=TrainBudget(steps=steps, batch_size=4, crop_px=128, seed=seed, device=device, progress=False))
    return segmenter


def contenders(args, sample) -> dict:
    """name -> segmenter-like object with ``predict`` (or the reason it is missing)."""
    from emcopilot.pipeline.models import load_model
    from emcopilot.core.plugins import get_registry

    found: dict = {}
    try:
        found["unet"] = load_model(args.model, args.device) if args.model else \
            trained_unet(sample, args.train_steps, args.device, args.seed)
    except Exception as error:  # report, do not hide, a contender that cannot start
        found["unet"] = f"{type(error).__name__}: {error}"
    try:
        found["classical"] = get_registry().get("segmenter", "classical").create({}, sample)
    except Exception as error:
        found["classical"] = f"{type(error).__name__}: {error}"
    if args.model:
        try:
            found["unet_no_flips"] = load_model(args.model, args.device, params={"test_time_flips": 1})
        except Exception as error:
            found["unet_no_flips"] = f"{type(error).__name__}: {error}"
    if args.sam_auto:
        try:
            found["sam_auto_vit_b"] = SamAutomatic(args.seed)
        except Exception as error:
            found["sam_auto_vit_b"] = f"{type(error).__name__}: {error}"
    if os.environ.get("EMCOPILOT_SAM_CHECKPOINT"):
        try:
            extractor = get_registry().get("prior_extractor", "sam").create({}, sample)
            found["sam"] = type("SamSegmenter", (), {"predict": lambda self, m: extractor.extract(m)})()
        except Exception as error:
            found["sam"] = f"{type(error).__name__}: {error}"
    else:
        found["sam"] = "skipped: no SAM checkpoint (EMCOPILOT_SAM_CHECKPOINT is not set)"
    return found


class SamAutomatic:
    """Segment Anything's automatic mask generator on ViT-B with random weights, as a segmenter."""

    def __init__(self, seed: int):
        import torch
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        torch.manual_seed(seed)
        self.model = sam_model_registry["vit_b"](checkpoint=None).eval()
        self.generator = SamAutomaticMaskGenerator(self.model)
        self.masks = 0

    def predict(self, micrograph):
        from emcopilot import Instances
        image = micrograph.data.astype(np.float64)
        low, high = np.percentile(image, [0.5, 99.5])
        grey = (np.clip((image - low) / (high - low + 1e-12), 0, 1) * 255).astype(np.uint8)
        import torch
        with torch.inference_mode():
            masks = self.generator.generate(np.repeat(grey[..., None], 3, axis=2))
        self.masks = len(masks)
        labels = np.zeros(grey.shape, np.int32)
        for index, mask in enumerate(sorted(masks, key=lambda m: -m["area"]), 1):  # small masks on top
            labels[mask["segmentation"]] = index
        return Instances(labels=labels)


def time_one(segmenter, micrograph, repeats: int) -> dict:
    try:
        from emcopilot.analysis.measure import particle_table
    except ImportError:
        particle_table = None
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        instances = segmenter.predict(micrograph)
        if particle_table is not None:
            particle_table(instances, micrograph)
        seconds.append(time.perf_counter() - started)
    best = min(seconds)
    return {"seconds": seconds, "megapixels_per_s": micrograph.data.size / 1e6 / best, "objects": instances.count,
            "includes_particle_table": particle_table is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--recipe", default="nanoparticles-haadf")
    parser.add_argument("--model", type=Path, default=None, help="saved unet model folder (default: train one)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sam-auto", action="store_true",
                        help="also time SAM's automatic mask generator on ViT-B (random weights; slow on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/segment_throughput.json"))
    args = parser.parse_args(argv)

    import torch

    from emcopilot import Micrograph
    from emcopilot.core.recipe import load_recipe
    from emcopilot.pipeline.rundir import environment

    if args.threads:
        torch.set_num_threads(args.threads)
    sample = load_recipe(args.recipe).sample
    segmenters = contenders(args, sample)
    results = {"command": " ".join(sys.argv), "recipe": args.recipe, "device": args.device,
               "torch_threads": torch.get_num_threads(), "environment": environment(), "runs": []}
    for size in args.sizes:
        image, _ = synthetic_frame(sample, size, args.seed + 100)
        micrograph = Micrograph(image, pixel_size_nm=sample.working_pixel_size_nm, name=f"synthetic_{size}.tif")
        for name, segmenter in segmenters.items():
            if isinstance(segmenter, str):
                results["runs"].append({"segmenter": name, "size_px": size, "error": segmenter})
                print(f"{name:10s} {size:5d}^2  -- {segmenter}")
                continue
            timing = time_one(segmenter, micrograph, 1 if name == "sam_auto_vit_b" else args.repeats)
            if name == "sam_auto_vit_b":
                timing["sam_masks"] = segmenter.masks
            results["runs"].append({"segmenter": name, "size_px": size, **timing})
            print(f"{name:10s} {size:5d}^2  {timing['megapixels_per_s']:8.3f} MP/s  "
                  f"({min(timing['seconds']):.2f} s, {timing['objects']} objects)")
    results["ratios"] = {}
    for size in args.sizes:
        runs = {r["segmenter"]: min(r["seconds"]) for r in results["runs"] if r["size_px"] == size and "seconds" in r}
        if "unet" in runs:
            results["ratios"][str(size)] = {f"{name}_over_unet": seconds / runs["unet"]
                                            for name, seconds in runs.items() if name != "unet"}
            print(f"{size}^2 seconds per frame over the U-Net's: " + ", ".join(
                f"{name} {value:.2f}x" for name, value in results["ratios"][str(size)].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
