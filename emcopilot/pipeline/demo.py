"""``emcopilot demo``: the whole loop on micrographs it makes itself, checked against hidden truth.

The physics engine (layout sampler, analytic renderer and the recipe's physics
adapter) makes a small set of "experimental" micrographs, written as calibrated
TIFF files; their labels are kept aside in ``truth/`` and never shown to the
loop. The loop then runs label-free on the TIFFs and the demo scores its
predictions against the hidden labels with the recipe's metrics.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.interfaces import Instances
from ..specimen.layout import LayoutSpec, sample_layout
from ..core.plugins import get_registry
from ..core.recipe import Recipe, load_recipe
from ..core.files import write_json, write_tiff

log = logging.getLogger(__name__)

DEMO_RECIPE = "nanoparticles-haadf"
DEMO_IMAGES = 6
DEMO_SIDE_PX = 384
#: The segmenter's wall-time budget in the demo, so that the whole demo takes a few minutes on 2 CPU cores
#: however fast they are (training anneals over the time it has; 208 of 800 steps on a slow 2-core machine).
DEMO_TRAINING_MINUTES = 2.5


def write_calibrated_tiff(path: Path, image: np.ndarray, pixel_size_nm: float) -> None:
    """A TIFF with its pixel size, readable by :func:`emcopilot.io.readers.read_micrograph`."""
    from rsciio import tiff
    axes = [{"name": name, "scale": pixel_size_nm, "units": "nm", "size": size, "offset": 0.0, "navigate": False}
            for name, size in zip(("y", "x"), image.shape)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tiff.file_writer(str(path), {"data": image.astype(np.float32), "axes": axes, "metadata": {},
                                 "original_metadata": {}})


def make_experiment(recipe: Recipe, directory: Path, *, count: int = DEMO_IMAGES, side_px: int = DEMO_SIDE_PX,
                    seed: int = 2024) -> list[tuple[Path, Instances]]:
    """Render ``count`` micrographs at a magnification a little off the recipe's working scale."""
    rng = np.random.default_rng(seed)
    pixel_size_nm = recipe.sample.working_pixel_size_nm * 1.25  # the loop must resample
    spec = LayoutSpec.from_sample(recipe.sample)
    registry = get_registry()
    generator = registry.get("generator", "physical").create({}, recipe.sample)
    # the microscope as the plugin models it by default (the recipe's adapter settings describe
    # how the loop's generator output is treated, not the instrument)
    adapter = registry.get("physics_adapter", recipe.physics_adapter.plugin).create({}, recipe.sample)
    made = []
    for index in range(count):
        layout = sample_layout(spec, (side_px, side_px), pixel_size_nm, rng)
        [clean] = generator.generate([layout], rng)
        image = adapter.apply(clean, pixel_size_nm, rng, layout=layout)
        path = directory / "inputs" / f"demo_{index:02d}.tif"
        write_calibrated_tiff(path, image, pixel_size_nm)
        truth = layout.instances()
        write_tiff(directory / "truth" / f"demo_{index:02d}.tif", truth.labels)
        made.append((path, truth))
    return made


def score(recipe: Recipe, predictions: list[Instances], truths: list[Instances]) -> dict[str, Any]:
    """The recipe's metrics against the hidden truth, pooled over images (the images side by side as
    one mosaic, so that detection counts add up), keyed by plugin name; metrics that compare images
    rather than objects are left out."""
    from .scoring import mosaic
    registry = get_registry()
    prediction, truth = mosaic(predictions), mosaic(truths)
    scores: dict[str, Any] = {}
    for choice in recipe.metrics:
        if (registry.get("metric", choice.plugin).compares or "instances") != "instances":
            continue
        scores[choice.plugin] = {key: float(value) for key, value in
                                 choice.create(recipe.sample, registry)(prediction, truth).items()}
    return scores


def run_demo(out: Path, recipe_name: str = DEMO_RECIPE, progress: bool = True) -> dict[str, Any]:
    from .loop import Loop
    started = time.perf_counter()
    recipe = load_recipe(recipe_name)
    made = make_experiment(recipe, out)
    result = Loop(recipe, [path for path, _ in made], out / "run", progress=progress,
                  max_minutes=DEMO_TRAINING_MINUTES).run()
    scores = score(recipe, result.instances, [truth for _, truth in made])
    scores["label_free"] = result.run_info.get("metrics", {})  # what the loop said without the truth
    scores["wall_time_s"] = round(time.perf_counter() - started, 1)
    scores["recipe"] = recipe.name
    write_json(out / "demo.json", scores)
    return scores
