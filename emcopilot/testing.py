"""Conformance checks for plugin components: what the loop relies on, slot by slot.

A plugin author runs them in the plugin's own tests::

    from emcopilot.testing import check_component

    def test_my_adapter_conforms():
        check_component("physics_adapter", "idpc-stem")          # a registered name ...

    def test_my_segmenter_conforms():
        check_component("segmenter", MySegmenter({}, sample), sample=sample)   # ... or an instance

Each check feeds the component tiny inputs (micrographs of 128 x 128 pixels with a
few objects of the sample's size and contrast, a two-step training budget) and
calls it as the loop does. A broken contract raises :class:`ConformanceError`
(an ``AssertionError``, so pytest shows it as a failure) naming the slot, the
component and what it did. What is checked, per slot:

- ``prior_extractor``: ``extract`` returns :class:`~emcopilot.Instances` on the
  micrograph's own grid (points, where given, inside the frame), leaves the
  input unchanged, gives the same answer twice, and copes with a blank frame
  (empty instances or an :class:`~emcopilot.EmcopilotError`, not a crash);
- ``physics_adapter``: ``fit`` returns JSON; a fresh adapter ``restore``\\ d from
  that JSON applies the same degradation as the fitted one for the same seed
  (a run resumes with it); ``apply`` keeps the shape, is finite and leaves the
  clean image unchanged;
- ``generator``: ``fit`` returns JSON (or nothing); ``generate`` gives one finite
  image per layout of the layout's shape; ``save``/``load`` into a fresh
  instance reproduces the images for the same seed;
- ``segmenter``: ``fit`` returns JSON (or nothing); ``predict`` returns
  instances on the micrograph's own grid, also for a micrograph at twice the
  working pixel size; ``save``/``load`` into a fresh instance predicts the same;
- ``metric``: called on what it declares it ``compares`` (two equal label
  images, an image and a slightly noisy copy, two sets of images), returns a
  mapping of names to finite numbers that JSON can hold.
"""
from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .core.errors import EmcopilotError
from .core.interfaces import Instances, Micrograph, TrainBudget

__all__ = ["ConformanceError", "check_component", "default_sample", "tiny_micrograph"]

#: Side of the micrographs the checks feed in (the loop's smallest working image is 64 px).
SIDE_PX = 128
#: The budget trainable components get: enough to run every code path, not to learn.
TINY_BUDGET = TrainBudget(steps=2, batch_size=2, crop_px=64, seed=0, max_minutes=None, device="cpu",
                          progress=False)


class ConformanceError(AssertionError):
    """A component breaks a contract the loop relies on."""


def default_sample(kind: str = "particles", modality: str = "haadf-stem") -> Any:
    """A recipe ``sample:`` block for the checks: Pt on carbon, particles (1.5-10 nm at 0.2 nm/px),
    clusters or single atoms (at 0.03 nm/px)."""
    from .core.recipe import Sample

    atomistic = kind != "particles"
    return Sample.from_dict({
        "material": "Pt", "support": "carbon", "modality": modality, "kind": kind,
        "material_z": 78, "support_z": 6,
        "diameter_nm": [0.08, 0.2] if kind == "atoms" else [0.4, 1.0] if kind == "clusters" else [1.5, 10.0],
        "working_pixel_size_nm": 0.03 if atomistic else 0.2,
        "dose_e_per_A2": [1000.0, 50000.0] if atomistic else [500.0, 20000.0],
        "accelerating_voltage_kV": 200.0,
    })


def tiny_micrograph(sample: Any, seed: int = 0, *, pixel_size_nm: float | None = None,
                    blank: bool = False) -> tuple[Micrograph, np.ndarray]:
    """(micrograph, true labels): ``SIDE_PX``² counts of a support with a few objects of the
    sample's typical size, brighter than it (darker for bright-field), with shot noise."""
    rng = np.random.default_rng(seed)
    pixel_size_nm = float(pixel_size_nm or sample.working_pixel_size_nm)
    low, high = (float(v) for v in sample.diameter_nm)
    diameter_px = min(max(math.sqrt(low * high) / pixel_size_nm, 3.0), 20.0)
    rows, cols = np.mgrid[:SIDE_PX, :SIDE_PX]
    signal = np.full((SIDE_PX, SIDE_PX), 200.0)
    labels = np.zeros((SIDE_PX, SIDE_PX), np.int32)
    if not blank:
        margin = diameter_px + 2
        grid = np.linspace(margin, SIDE_PX - margin, 3)
        centres = [(r + rng.uniform(-2, 2), c + rng.uniform(-2, 2)) for r in grid for c in grid]
        dark = str(getattr(sample, "particle_contrast", "bright")) == "dark"
        for index, (row, col) in enumerate(centres, start=1):
            distance2 = (rows - row) ** 2 + (cols - col) ** 2
            labels[distance2 <= (diameter_px / 2) ** 2] = index
            if sample.kind == "particles":
                bump = np.sqrt(np.clip(1 - distance2 / (diameter_px / 2) ** 2, 0, None))
            else:
                bump = np.exp(-distance2 / (2 * (diameter_px / 2.355) ** 2))
            signal += (-0.5 if dark else 1.5) * 200.0 * bump
        data = rng.poisson(np.clip(signal, 1, None)).astype(np.float32)
    else:
        data = signal.astype(np.float32)
    return Micrograph(data, pixel_size_nm=pixel_size_nm, name=f"conformance-{seed}.tif"), labels


def check_component(slot: str, component: Any, *, params: Mapping[str, Any] | None = None,
                    sample: Any = None, registry: Any = None) -> list[str]:
    """Run the checks of ``slot`` on ``component`` (a registered name, or an instance); returns the
    names of the checks that passed, raises :class:`ConformanceError` on the first that fails.

    A name is created from ``registry`` (default: the installed plugins) with ``params`` and
    ``sample`` (default :func:`default_sample`), and re-created wherever a check needs a fresh
    instance (resuming, loading); an instance is copied with :func:`copy.deepcopy` for that.
    """
    from .core.plugins import SLOTS, get_registry

    if slot not in SLOTS:
        raise ConformanceError(f"unknown slot {slot!r}; the slots are {sorted(SLOTS)}")
    sample = sample if sample is not None else default_sample()
    compares = None
    if isinstance(component, str):
        entry = (registry or get_registry()).get(slot, component)
        label = f"{slot} {component!r} ({entry.origin})"
        compares = entry.compares

        def fresh() -> Any:
            return entry.create(dict(params or {}), sample)
    else:
        label = f"{slot} {type(component).__name__}"
        template = copy.deepcopy(component)

        def fresh() -> Any:
            return copy.deepcopy(template)
    if slot == "metric":
        compares = compares or getattr(component, "compares", None) or "instances"
        return _check_metric(label, fresh(), compares, sample)
    checks = {"prior_extractor": _check_prior, "physics_adapter": _check_adapter,
              "generator": _check_generator, "segmenter": _check_segmenter}
    return checks[slot](label, fresh, sample)


# ----------------------------------------------------------------------------- helpers

def _fail(label: str, what: str) -> ConformanceError:
    return ConformanceError(f"{label}: {what}")


def _json(label: str, value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=True))
    except (TypeError, ValueError) as error:
        raise _fail(label, f"{what} must be JSON (it is written to the run directory): {error}") from error


def _instances_on_grid(label: str, result: Any, shape: tuple[int, int], what: str) -> Instances:
    if not isinstance(result, Instances):
        raise _fail(label, f"{what} returned {type(result).__name__}, not emcopilot.Instances")
    if result.labels is not None and result.labels.shape != tuple(shape):
        raise _fail(label, f"{what} returned labels of shape {result.labels.shape} for a micrograph of "
                           f"{tuple(shape)}: instances are on the micrograph's own grid")
    if result.labels is not None and result.labels.min(initial=0) < 0:
        raise _fail(label, f"{what} returned negative labels (0 is background, 1..N the objects)")
    if result.points is not None and len(result.points):
        points = result.points
        if not np.isfinite(points).all() or (points < -0.5).any() or (points >= np.array(shape) - 0.5).any():
            raise _fail(label, f"{what} returned points outside the {tuple(shape)} frame (row, column)")
    return result


def _same_instances(a: Instances, b: Instances) -> bool:
    same_labels = (a.labels is None) == (b.labels is None) and (a.labels is None or np.array_equal(a.labels, b.labels))
    same_points = (a.points is None) == (b.points is None) and (
        a.points is None or (a.points.shape == b.points.shape and np.allclose(a.points, b.points)))
    return bool(same_labels and same_points)


def _finite_image(label: str, image: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != tuple(shape):
        raise _fail(label, f"{what} returned shape {image.shape}, expected {tuple(shape)}")
    if not np.issubdtype(image.dtype, np.floating) or not np.isfinite(image).all():
        raise _fail(label, f"{what} must return finite floating-point pixels, got {image.dtype} "
                           f"with {int(np.size(image) - np.isfinite(image).sum())} non-finite")
    return image


def _call(label: str, what: str, function: Callable[[], Any]) -> Any:
    try:
        return function()
    except ConformanceError:
        raise
    except Exception as error:  # noqa: BLE001 - any exception is the component's failure, named
        raise _fail(label, f"{what} raised {type(error).__name__}: {error}") from error


def _layouts(sample: Any, count: int, seed: int) -> list[Any]:
    from .specimen.layout import LayoutSpec, sample_layout

    spec = LayoutSpec.from_sample(sample)
    rng = np.random.default_rng(seed)
    return [sample_layout(spec, (SIDE_PX, SIDE_PX), sample.working_pixel_size_nm, rng) for _ in range(count)]


# ----------------------------------------------------------------------------- slots

def _check_prior(label: str, fresh: Callable[[], Any], sample: Any) -> list[str]:
    extractor = fresh()
    micrograph, _ = tiny_micrograph(sample)
    before = micrograph.data.copy()
    first = _instances_on_grid(label, _call(label, "extract()", lambda: extractor.extract(micrograph)),
                               micrograph.shape, "extract()")
    if not np.array_equal(micrograph.data, before):
        raise _fail(label, "extract() modified the micrograph it was given")
    again = _call(label, "extract() a second time", lambda: extractor.extract(micrograph))
    if not _same_instances(first, again):
        raise _fail(label, "extract() gave a different answer for the same micrograph (seed any randomness)")
    blank, _ = tiny_micrograph(sample, blank=True)
    try:
        _instances_on_grid(label, extractor.extract(blank), blank.shape, "extract() of a blank frame")
    except EmcopilotError:
        pass  # a clear refusal is fine
    except ConformanceError:
        raise
    except Exception as error:  # noqa: BLE001
        raise _fail(label, f"extract() of a blank frame raised {type(error).__name__}: {error} "
                           "(return empty instances or raise an EmcopilotError that says why)") from error
    return ["instances on the micrograph's grid", "input unchanged", "deterministic", "blank frame"]


def _check_adapter(label: str, fresh: Callable[[], Any], sample: Any) -> list[str]:
    adapter = fresh()
    micrographs = [tiny_micrograph(sample, seed)[0] for seed in (0, 1)]
    fitted = _json(label, _call(label, "fit()", lambda: adapter.fit(micrographs)), "fit()'s result")
    if not isinstance(fitted, dict):
        raise _fail(label, f"fit() must return a dict of the fitted conditions, got {type(fitted).__name__}")
    layout = _layouts(sample, 1, 0)[0]
    clean = np.full((SIDE_PX, SIDE_PX), 1.0, np.float32) + layout.thickness_nm.astype(np.float32)
    before = clean.copy()
    px = sample.working_pixel_size_nm
    recorded = _finite_image(label, _call(label, "apply()", lambda: adapter.apply(
        clean, px, np.random.default_rng(7), layout=layout)), clean.shape, "apply()")
    if not np.array_equal(clean, before):
        raise _fail(label, "apply() modified the clean image it was given")
    resumed = fresh()
    _call(label, "restore()", lambda: resumed.restore(fitted))
    again = _finite_image(label, _call(label, "apply() after restore()", lambda: resumed.apply(
        clean, px, np.random.default_rng(7), layout=layout)), clean.shape, "apply() after restore()")
    if not np.allclose(recorded, again, rtol=1e-5, atol=1e-6 * (float(np.abs(recorded).max()) + 1)):
        raise _fail(label, "a fresh adapter restore()d from fit()'s JSON degrades differently from the fitted "
                           "one for the same seed: a resumed run would train on other images")
    return ["fit() returns JSON", "apply() keeps shape, finite", "input unchanged", "restore() resumes"]


def _check_generator(label: str, fresh: Callable[[], Any], sample: Any) -> list[str]:
    generator = fresh()
    pairs = [tiny_micrograph(sample, seed) for seed in (0, 1)]
    with tempfile.TemporaryDirectory(prefix="emcopilot-conformance-") as folder:
        folder = Path(folder)
        history = _call(label, "fit()", lambda: generator.fit([labels for _, labels in pairs],
                                                               [m for m, _ in pairs], folder / "work",
                                                               budget=TINY_BUDGET))
        _json(label, history or {}, "fit()'s history")
        layouts = _layouts(sample, 2, 0)
        images = _call(label, "generate()", lambda: generator.generate(layouts, np.random.default_rng(3)))
        if not isinstance(images, (list, tuple)) or len(images) != len(layouts):
            raise _fail(label, f"generate() must return one image per layout ({len(layouts)}), "
                               f"got {type(images).__name__} of {len(images) if hasattr(images, '__len__') else '?'}")
        for image, layout in zip(images, layouts):
            _finite_image(label, image, layout.shape, "generate()")
        _call(label, "save()", lambda: generator.save(folder / "model"))
        loaded = fresh()
        _call(label, "load()", lambda: loaded.load(folder / "model"))
        again = _call(label, "generate() after load()", lambda: loaded.generate(layouts, np.random.default_rng(3)))
        if not all(np.allclose(a, b, rtol=1e-4, atol=1e-6 * (float(np.abs(a).max()) + 1))
                   for a, b in zip(images, again)):
            raise _fail(label, "a fresh generator load()ed from save() renders other images for the same seed")
    return ["fit() returns JSON", "one finite image per layout", "save()/load() reproduces"]


def _check_segmenter(label: str, fresh: Callable[[], Any], sample: Any) -> list[str]:
    segmenter = fresh()
    pairs = [tiny_micrograph(sample, seed) for seed in (0, 1)]
    truth = [Instances(labels=labels) for _, labels in pairs]
    with tempfile.TemporaryDirectory(prefix="emcopilot-conformance-") as folder:
        folder = Path(folder)
        history = _call(label, "fit()", lambda: segmenter.fit([m.data for m, _ in pairs], truth, folder / "work",
                                                               budget=TINY_BUDGET))
        _json(label, history or {}, "fit()'s history")
        micrograph = pairs[0][0]
        first = _instances_on_grid(label, _call(label, "predict()", lambda: segmenter.predict(micrograph)),
                                   micrograph.shape, "predict()")
        coarse, _ = tiny_micrograph(sample, 2, pixel_size_nm=2 * sample.working_pixel_size_nm)
        _instances_on_grid(label, _call(label, "predict() at twice the working pixel size",
                                        lambda: segmenter.predict(coarse)),
                           coarse.shape, "predict() at twice the working pixel size")
        _call(label, "save()", lambda: segmenter.save(folder / "model"))
        loaded = fresh()
        _call(label, "load()", lambda: loaded.load(folder / "model"))
        again = _call(label, "predict() after load()", lambda: loaded.predict(micrograph))
        if not _same_instances(first, again):
            raise _fail(label, "a fresh segmenter load()ed from save() predicts differently")
    return ["fit() returns JSON", "instances on the micrograph's grid", "other pixel sizes",
            "save()/load() reproduces"]


def _check_metric(label: str, metric: Any, compares: str, sample: Any) -> list[str]:
    micrograph, labels = tiny_micrograph(sample)
    other, _ = tiny_micrograph(sample, 1)
    if compares == "instances":
        arguments = (Instances(labels=labels), Instances(labels=labels.copy()))
    elif compares == "image pairs":
        noisy = micrograph.data + np.random.default_rng(5).normal(0, 1, micrograph.shape).astype(np.float32)
        arguments = (micrograph.data, noisy)  # not identical: PSNR is infinite there
    elif compares == "image sets":
        arguments = ([micrograph.data, other.data], [other.data, micrograph.data])
    else:
        raise _fail(label, f"compares {compares!r}: a metric compares 'instances', 'image pairs' or 'image sets'")
    scores = _call(label, f"calling it on {compares}", lambda: metric(*arguments))
    if not isinstance(scores, Mapping) or not scores:
        raise _fail(label, f"must return a non-empty mapping of names to numbers, got {type(scores).__name__}")
    for name, value in scores.items():
        if not isinstance(name, str):
            raise _fail(label, f"score names must be strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(value)):
            raise _fail(label, f"score {name!r} must be a finite number for near-identical inputs, got {value!r}")
    _json(label, {name: float(value) for name, value in scores.items()}, "the scores")
    return [f"scores {compares}"]
