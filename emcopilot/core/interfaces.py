"""Core data types and the protocols of the five slots.

Everything here is numpy-only: importing it never imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import InputError

#: Pixel sizes served, nm/px: 12,000,000x (~0.005 nm/px) to 400,000x (~0.5 nm/px),
#: with head room for overview images and sub-pm calibrations.
PIXEL_SIZE_RANGE_NM = (1e-4, 1e3)


def text_safe(name: str) -> str:
    """``name`` as text every output can hold: bytes of a file name that are not UTF-8 (legal on
    Linux; Python decodes them to lone surrogates) become ``\\xNN`` escapes, e.g. ``caf\\xe9.png``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass
class Micrograph:
    """A 2-D micrograph: float32 pixels plus calibration and provenance.

    ``pixel_size_nm`` is ``None`` when the file carries no calibration.
    ``name`` is the file name, with ``#k`` appended for frame *k* of a stack.
    """

    data: np.ndarray
    pixel_size_nm: float | None = None
    modality: str | None = None
    source: Path | None = None
    name: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        label = self.name or (str(self.source) if self.source else "micrograph")
        if data.ndim != 2:
            raise InputError(f"{label}: a micrograph must be 2-D, got shape {data.shape}")
        if data.size == 0:
            raise InputError(f"{label}: the image is empty (shape {data.shape})")
        if np.iscomplexobj(data) or not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
            raise InputError(f"{label}: pixel type {data.dtype} is not a real-valued image")
        self.data = data.astype(np.float32, copy=False)
        if self.pixel_size_nm is not None:
            size = float(self.pixel_size_nm)
            if not (PIXEL_SIZE_RANGE_NM[0] <= size <= PIXEL_SIZE_RANGE_NM[1]):
                raise InputError(f"{label}: pixel size {size!r} nm is outside "
                                 f"{PIXEL_SIZE_RANGE_NM[0]}–{PIXEL_SIZE_RANGE_NM[1]} nm")
            self.pixel_size_nm = size
        if not self.name:
            self.name = self.source.name if self.source else "micrograph"
        self.name = text_safe(self.name)

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def require_finite(self) -> None:
        """Raise :class:`InputError` naming the image if any pixel is NaN or inf."""
        bad = ~np.isfinite(self.data)
        if bad.any():
            raise InputError(f"{self.name}: {int(bad.sum())} of {bad.size} pixels are NaN or infinite")


@dataclass
class Instances:
    """Objects found in (or drawn for) a micrograph, on its pixel grid.

    ``labels``: int32 image, 0 = background, 1..N = objects. ``points``: (N, 2)
    float array of atom centres as (row, column). Either may be ``None``; an
    atom finder sets both (points and small disks).
    ``scores``: optional per-object confidence, indexed like the labels 1..N
    (or the points). An atom finder that knows the apparent width of one atom
    puts it in ``metadata["atom_fwhm_px"]`` (pixels of this grid): the particle
    table then refines each point with a fitted 2-D Gaussian.
    """

    labels: np.ndarray | None = None
    points: np.ndarray | None = None
    scores: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.labels is None and self.points is None:
            raise InputError("Instances need a label image, points, or both")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
                raise InputError(f"labels must be a 2-D integer image, got {labels.dtype} {labels.shape}")
            self.labels = labels.astype(np.int32, copy=False)
        if self.points is not None:
            points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
            self.points = points

    @property
    def count(self) -> int:
        if self.points is not None:
            return len(self.points)
        return len(np.unique(self.labels[self.labels > 0]))


@dataclass(frozen=True)
class TrainBudget:
    """How much a trainable component may train (from the recipe's profile)."""

    steps: int
    batch_size: int = 8
    crop_px: int = 128
    seed: int = 0
    max_minutes: float | None = None
    device: str = "auto"  # "auto" -> CUDA when available, else CPU
    progress: bool = True

    def fraction_done(self, step: int, elapsed_s: float) -> float:
        """How far training is, 0..1: by steps, or by wall time where ``max_minutes`` binds first."""
        done = step / max(1, self.steps)
        if self.max_minutes:
            done = max(done, elapsed_s / (60 * self.max_minutes))
        return min(done, 1.0)

    def schedule(self) -> "TrainingSchedule":
        """The clock a training loop anneals by (see :class:`TrainingSchedule`)."""
        return TrainingSchedule(self)

    def progress_bar(self, description: str) -> "TrainingBar":
        """A progress bar for this budget (a silent one when ``progress`` is off)."""
        return TrainingBar(self, description)


class TrainingSchedule:
    """How far training is, 0..1, for its learning-rate schedule: by steps, so that a run is
    repeatable bit for bit, unless ``max_minutes`` will bind.

    The wall time enters only once the pace shows that the planned steps will not fit in the cap
    (judged after :attr:`JUDGE_AFTER_STEPS` steps, or sooner when the cap is already
    :attr:`JUDGE_AFTER_FRACTION` spent): from then on training anneals over the time it has, as
    :meth:`TrainBudget.fraction_done` says. A machine fast enough for the planned steps thus trains
    exactly the same network however loaded it is, instead of one whose schedule moved with the
    clock. :attr:`by_time_from` is the step where the clock took over (``None``: never).
    """

    JUDGE_AFTER_STEPS = 20
    JUDGE_AFTER_FRACTION = 0.05

    def __init__(self, budget: TrainBudget):
        self.budget = budget
        self.by_time_from: int | None = None

    def done(self, step: int, elapsed_s: float) -> float:
        budget = self.budget
        by_steps = min(step / max(1, budget.steps), 1.0)
        if not budget.max_minutes:
            return by_steps
        cap_s = 60 * budget.max_minutes
        if elapsed_s >= cap_s:
            return 1.0
        if self.by_time_from is None and step > 0 and (
                step >= self.JUDGE_AFTER_STEPS or elapsed_s >= self.JUDGE_AFTER_FRACTION * cap_s) \
                and elapsed_s / step * budget.steps > cap_s:
            self.by_time_from = step
        if self.by_time_from is None:
            return by_steps
        return budget.fraction_done(step, elapsed_s)


class TrainingBar:
    """Progress of a training run in per cent of its budget (tqdm): by steps, or by time where the
    ``max_minutes`` cap binds first, so a slow machine's bar still reaches 100 % when the cap ends
    training early; the step reached is shown beside it."""

    def __init__(self, budget: TrainBudget, description: str):
        self.budget, self.bar = budget, None
        if budget.progress:
            from tqdm.auto import tqdm
            cap = f", at most {budget.max_minutes:g} min" if budget.max_minutes else ""
            self.bar = tqdm(total=100, desc=f"{description} ({budget.steps} steps{cap})", unit="%", leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def advance(self, step: int, elapsed_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"step {step}", refresh=False)
            self.bar.update(100 * self.budget.fraction_done(step, elapsed_s) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@runtime_checkable
class PriorExtractor(Protocol):
    """image -> instance masks/points, from unlabelled micrographs."""

    def extract(self, micrograph: Micrograph) -> Instances: ...


@runtime_checkable
class PhysicsAdapter(Protocol):
    """Clean image -> micrograph as a given modality and microscope record it."""

    def fit(self, micrographs: Sequence[Micrograph]) -> dict[str, Any]:
        """Estimate imaging conditions from real micrographs; keep and return them (JSON-able)."""

    def restore(self, fitted: Mapping[str, Any]) -> None:
        """Use conditions returned earlier by :meth:`fit` (resuming a run)."""

    def apply(self, clean: np.ndarray, pixel_size_nm: float, rng: np.random.Generator,
              layout: Any = None) -> np.ndarray:
        """Degrade a clean image (float32, arbitrary units) as the microscope would."""


@runtime_checkable
class Generator(Protocol):
    """Label map (+ per-object attributes) -> clean, noise-free image."""

    def fit(self, label_maps: Sequence[np.ndarray], images: Sequence[Micrograph],
            workdir: Path, *, budget: TrainBudget) -> dict[str, Any]:
        """Learn (label map -> real image); return a JSON-able history/metrics dict."""

    def generate(self, layouts: Sequence[Any], rng: np.random.Generator) -> list[np.ndarray]:
        """Clean images for :class:`emcopilot.specimen.layout.Layout` objects (no detector noise)."""

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


@runtime_checkable
class Segmenter(Protocol):
    """Micrograph -> instances; trainable on (image, label) pairs."""

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[Instances],
            workdir: Path, *, budget: TrainBudget) -> dict[str, Any]:
        """Train on images at the recipe's working pixel size; return a JSON-able history."""

    def predict(self, micrograph: Micrograph) -> Instances: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...

    # Optional: ``adapt(images, workdir, *, budget) -> dict``, called by the loop right after
    # ``fit`` with the real micrographs (float32 arrays at the working pixel size, unlabelled),
    # for a segmenter that learns from them (self-training); it returns a JSON-able history.


@runtime_checkable
class Metric(Protocol):
    """(prediction, truth) -> named numbers."""

    def __call__(self, prediction: Any, truth: Any) -> dict[str, float]: ...
