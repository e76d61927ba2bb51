"""Label-free scores of one round of the loop: the recipe's ``metrics:`` where no label exists.

A lab running the loop has no labels for its micrographs, but the loop holds
three comparisons it can make honestly, and it scores each with every metric of
the recipe that compares what the comparison holds (a metric plugin says what it
compares when it registers: ``instances``, ``image pairs`` or ``image sets``):

``held_out_synthetic`` (instances)
    The trained segmenter on synthetic micrographs it never trained on, drawn
    by the same prior, generator and physics as its training set, against their
    exact labels. How well it learned the synthetic task: an upper bound on the
    real score, near it where the synthetic images look like the real ones.
``real_vs_priors`` (instances)
    The segmenter's objects on the real micrographs against the prior
    extractor's on the same micrographs: how far the network moved from the
    rough masks it learned the morphology from (agreement, not accuracy).
``realism`` (image sets)
    The synthetic training images against the real micrographs on the working
    grid (e.g. ``realism-gap``: power spectra, histograms, local noise).

Paired-image metrics (SSIM, PSNR, LPIPS) need an image and its own synthetic
twin; the loop has none here and records them as skipped, with the reason. A
metric that fails on what it is given is recorded with its error; the run goes
on. Instances of many images are scored as one mosaic (images side by side with
an empty gap), so counts pool over images as a detection score should.

:func:`metrics_stage` is the loop's ``metrics`` stage; :func:`score` scores any such
comparisons with the given metrics.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.errors import EmcopilotError
from ..core.files import read_json, write_json
from ..core.interfaces import Instances, Micrograph

log = logging.getLogger(__name__)

#: empty pixels between the images of a mosaic, so that no object touches another image's
MOSAIC_GAP_PX = 16


def mosaic(instances: Sequence[Instances], shapes: Sequence[tuple[int, int]] | None = None) -> Instances:
    """The instances of several images side by side (top-aligned, :data:`MOSAIC_GAP_PX` apart)
    as one, label ids and points shifted so that nothing collides. ``shapes``: each image's
    (rows, columns), where it is not that of its label image (points only, or labels smaller than
    the image)."""
    shapes = [tuple(shape) for shape in shapes] if shapes is not None else [_shape(item) for item in instances]
    height = max(shape[0] for shape in shapes)
    width = sum(shape[1] for shape in shapes) + MOSAIC_GAP_PX * (len(shapes) - 1)
    has_labels = all(item.labels is not None for item in instances)
    has_points = any(item.points is not None for item in instances)
    labels = np.zeros((height, width), np.int32) if has_labels else None
    points, offset, next_id = [], 0, 0
    for item, (rows, cols) in zip(instances, shapes):
        if labels is not None:
            block = item.labels.astype(np.int32)
            labels[:block.shape[0], offset:offset + block.shape[1]] = np.where(block > 0, block + next_id, 0)
            next_id += int(block.max(initial=0))
        if item.points is not None and len(item.points):
            points.append(item.points + np.array([0.0, offset]))
        offset += cols + MOSAIC_GAP_PX
    pixel_sizes = {item.metadata.get("pixel_size_nm") for item in instances}
    metadata = {"pixel_size_nm": pixel_sizes.pop()} if len(pixel_sizes) == 1 else {}
    return Instances(labels=labels if labels is not None else None,
                     points=(np.concatenate(points) if points else np.zeros((0, 2))) if has_points else None,
                     metadata=metadata)


def _shape(item: Instances) -> tuple[int, int]:
    if item.labels is not None:
        return item.labels.shape
    extent = np.ceil(item.points.max(0) + 1).astype(int) if item.points is not None and len(item.points) else (1, 1)
    return int(extent[0]), int(extent[1])


def score(metrics: Sequence[tuple[str, str, Any]], *, held_out: Sequence[tuple[Instances, Instances]] = (),
          real: Sequence[tuple[Instances, Instances]] = (), synthetic_images: Sequence[np.ndarray] = (),
          real_images: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """``metrics``: (key, compares, metric) for each of the recipe's metrics; the comparisons as in the
    module docstring ((prediction, truth) pairs of instances; the two image sets)."""
    out: dict[str, Any] = {}
    instance_sets = {"held_out_synthetic": held_out, "real_vs_priors": real}
    for comparison, pairs in instance_sets.items():
        scored = {key: _safe(metric, *_mosaics(pairs)) for key, compares, metric in metrics
                  if compares == "instances" and pairs}
        if scored:
            out[comparison] = {"images": len(pairs), **scored}
    if synthetic_images and real_images:
        scored = {key: _safe(metric, list(synthetic_images), list(real_images)) for key, compares, metric in metrics
                  if compares == "image sets"}
        if scored:
            out["realism"] = {"synthetic_images": len(synthetic_images), "real_images": len(real_images), **scored}
    skipped = {key: "compares image pairs: the loop holds no real micrograph with its own synthetic twin"
               for key, compares, _ in metrics if compares == "image pairs"}
    if skipped:
        out["skipped"] = skipped
    return out


def _mosaics(pairs: Sequence[tuple[Instances, Instances]]) -> tuple[Instances, Instances]:
    """Predictions and truths as two mosaics of the same layout (each pair shares one cell)."""
    predictions, truths = zip(*pairs)
    shapes = [tuple(max(a, b) for a, b in zip(_shape(p), _shape(t))) for p, t in pairs]
    return mosaic(predictions, shapes), mosaic(truths, shapes)


def _safe(metric: Any, prediction: Any, truth: Any) -> dict[str, Any]:
    try:
        values = metric(prediction, truth)
    except (EmcopilotError, ValueError) as error:
        log.warning("metric failed: %s", error)
        return {"error": str(error)}
    return {name: float(value) if isinstance(value, (int, float, np.number)) else value
            for name, value in dict(values).items()}


def headline(metrics: Mapping[str, Any]) -> str | None:
    """``label-free: F1 <a> on held-out synthetic images, F1 <b> against the priors on the real images``,
    the parts that were scored, else ``None``."""
    parts = []
    for comparison, words in (("held_out_synthetic", "on held-out synthetic images"),
                              ("real_vs_priors", "against the priors on the real images")):
        block = metrics.get(comparison) or {}
        f1 = next((entry["f1"] for entry in block.values() if isinstance(entry, Mapping) and "f1" in entry), None)
        if f1 is not None:
            parts.append(f"F1 {f1:.2f} {words}")
    return "label-free: " + ", ".join(parts) if parts else None


# --------------------------------------------------------------------------- the loop's metrics stage

def held_out_count(synthetic_images: int) -> int:
    """How many held-out synthetic micrographs the label-free scores use: an eighth of the training
    set, at least 4 and at most 16."""
    return int(min(16, max(4, synthetic_images // 8)))


def metrics_stage(state, round_index: int):
    """The ``metrics`` stage of round ``round_index`` of a loop (``state``: its
    :class:`~emcopilot.pipeline.stages.LoopState`): the three comparisons above, scored with the
    recipe's metrics, written to ``metrics.json``."""
    def compute(directory) -> None:
        loop = state.loop
        metrics = metric_components(state)
        held_out = []
        if any(compares == "instances" for _, compares, _ in metrics):
            count = held_out_count(int(loop.profile["synthetic_images"]))
            images, labels, points = state.render(round_index, count,
                                                  np.random.default_rng([loop.seed, round_index, 2]),
                                                  "held-out synthetic")
            segmenter = loop.component("segmenter")
            segmenter.load(state.stage_dir("segmenter", round_index) / "model")
            atomistic = state.sample.kind == "atoms"
            for image, label, point in zip(images, labels, points):
                truth = Instances(labels=label, points=point if atomistic else None)
                predicted = segmenter.predict(Micrograph(image, pixel_size_nm=state.working_px, name="held-out"))
                held_out.append((comparable(state, predicted), comparable(state, truth)))
        # on the working grid, where every image has the same pixel size (one matching radius)
        real = [(comparable(state, p, scaling), comparable(state, q, scaling))
                for p, q, scaling in zip(state.predictions, state.priors, state.scalings())]
        synthetic, _ = state.load_synthetic(round_index)
        write_json(directory / "metrics.json", score(
            metrics, held_out=held_out, real=real, synthetic_images=list(synthetic[:16]),
            real_images=[m.data for m in state.working_images()][:16]))
    return compute


def load_metrics(state, round_index: int) -> None:
    state.metrics = read_json(state.stage_dir("metrics", round_index) / "metrics.json")


def comparable(state, instances: Instances, scaling=None) -> Instances:
    """Atoms as points, everything else as a label image, on the working grid (``scaling``: from
    a micrograph's own grid), with the working pixel size for metrics in nm."""
    from ..specimen.scale import points_to_working, to_working_labels
    metadata = {"pixel_size_nm": state.working_px}
    if state.sample.kind == "atoms" and instances.points is not None:
        points = instances.points if scaling is None else points_to_working(instances.points, scaling)
        return Instances(points=points, metadata=metadata)
    labels = instances.labels if scaling is None else to_working_labels(instances.labels, scaling)
    return Instances(labels=labels, metadata=metadata)


def metric_components(state) -> list[tuple[str, str, Any]]:
    """(key, what it compares, metric) for each of the recipe's metrics; a second use of a plugin is ``name#2``."""
    out, seen = [], {}
    for choice in state.loop.recipe.metrics:
        seen[choice.plugin] = seen.get(choice.plugin, 0) + 1
        key = choice.plugin if seen[choice.plugin] == 1 else f"{choice.plugin}#{seen[choice.plugin]}"
        compares = state.loop.registry.get("metric", choice.plugin).compares or "instances"
        out.append((key, compares, choice.create(state.sample, state.loop.registry)))
    return out
