"""The commands as Python functions, for notebooks and scripts.

::

    import emcopilot

    result = emcopilot.run("nanoparticles-haadf", ["a.dm4", "b.dm4"], out="run1")
    result.table                    # the particle table (pandas), as particles.parquet
    result.statistics["pooled"]     # mean, CI, lognormal fit, density
    result.plot()                   # the size distribution with its fit
    result.labels["a.dm4"]          # the label image of one micrograph

    again = emcopilot.segment("run1/model", [signal])     # a HyperSpy Signal2D, at its axes' scale
    later = emcopilot.load_run("run1")                    # the same Result, from the folder

``images`` is anything :func:`emcopilot.io.inputs.gather` takes: paths, folders, numpy arrays
(with ``pixel_size_nm=``, or uncalibrated), :class:`~emcopilot.Micrograph` objects and HyperSpy
``Signal2D`` objects (a stack is its frames), or a mapping of names to in-memory images. Each
function writes the same folder as its command (``out=None``: a new temporary folder, kept
until the interpreter exits) and returns a :class:`Result`. Errors are those of the commands:
:class:`~emcopilot.EmcopilotError` subclasses naming the input and what is wrong; an input that
cannot be read is listed in ``Result.errors`` and the others go on.
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..core.errors import EmcopilotError, InputError

if TYPE_CHECKING:
    import pandas as pd

    from ..io.calibration import CalibrationTable
    from ..core.interfaces import Micrograph

log = logging.getLogger(__name__)

__all__ = ["Result", "extract", "load_run", "run", "segment"]


class Result:
    """A finished ``run``, ``extract`` or ``segment``, as its output folder holds it.

    ``table`` is the particle table (docs/particle-table.md), ``statistics`` the size statistics
    (``statistics.json`` of a run; computed from the table for ``extract`` and ``segment``),
    ``run_info`` the folder's ``run.json``, ``errors`` the ``(input, message)`` pairs of inputs
    that failed, ``images`` the names of the micrographs measured, ``labels`` their label images
    (read from ``masks/`` when first asked for), and ``micrographs`` the micrographs themselves
    where the call that made this result still has them (``None`` after :func:`load_run`).
    """

    def __init__(self, out: str | Path, *, table: "pd.DataFrame | None" = None,
                 micrographs: "list[Micrograph] | None" = None, statistics: Mapping[str, Any] | None = None):
        from ..core.files import read_json
        self.out = Path(out)
        if not (self.out / "run.json").is_file():
            raise InputError(f"{self.out}: not an emcopilot output folder (no run.json); give the --out of a "
                             f"run, extract or segment")
        try:
            self.run_info: dict[str, Any] = read_json(self.out / "run.json")
        except ValueError as error:
            raise InputError(f"{self.out / 'run.json'}: not valid JSON: {error}") from None
        self.command: str = str(self.run_info.get("command", "run"))
        self.micrographs = micrographs
        self._table = table
        self._statistics = dict(statistics) if statistics is not None else None
        self._labels: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ contents

    @property
    def table(self) -> "pd.DataFrame":
        if self._table is None:
            import pandas as pd
            path = self.out / "particles.parquet"
            self._table = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        return self._table

    @property
    def images(self) -> list[str]:
        """The micrographs measured, in input order."""
        if self.micrographs is not None:
            return [m.name for m in self.micrographs]
        images = self.run_info.get("images")
        if isinstance(images, Mapping):
            return list(images)
        return list(self.statistics.get("per_image", {}))

    @property
    def statistics(self) -> dict[str, Any]:
        if self._statistics is None:
            from ..core.files import read_json
            path = self.out / "statistics.json"
            if path.is_file():
                self._statistics = read_json(path)
            else:
                from ..analysis.statistics import size_statistics
                self._statistics = size_statistics(self.table, self._image_sizes())
        return self._statistics

    def _image_sizes(self) -> dict[str, dict[str, Any]]:
        if self.micrographs is not None:
            from ..specimen.pixel_size import reported_pixel_size_nm
            return {m.name: {"shape": m.shape, "pixel_size_nm": reported_pixel_size_nm(m)} for m in self.micrographs}
        return {name: {"shape": tuple(info["shape"]), "pixel_size_nm": info.get("pixel_size_nm")
                       if info.get("pixel_size_credible", True) else None}
                for name, info in (self.run_info.get("images") or {}).items()}

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(str(e.get("input")), str(e.get("error"))) for e in self.run_info.get("errors", [])]

    @property
    def labels(self) -> "_Labels":
        """``labels[image]``: the label image (0 background, k the table's ``id`` k) as a numpy array."""
        return _Labels(self)

    def pixel_size_nm(self, image: str) -> float | None:
        """The pixel size the measurements of ``image`` used (``None``: pixels only)."""
        if self.micrographs is not None:
            for micrograph in self.micrographs:
                if micrograph.name == image:
                    return micrograph.pixel_size_nm
        info = (self.run_info.get("images") or {}).get(image)
        if isinstance(info, Mapping):
            return info.get("pixel_size_nm")
        rows = self.table[self.table["image"] == image] if "pixel_size_nm" in self.table else []
        return float(rows["pixel_size_nm"].iloc[0]) if len(rows) else None

    # ------------------------------------------------------------------ helpers

    def plot(self, ax=None):
        """The size distribution with its lognormal fit and the mean's 95 % interval, on ``ax``
        (default: a new pyplot figure); returns the axes."""
        from .report import plot_size_distribution
        if ax is None:
            import matplotlib.pyplot as plt
            _, ax = plt.subplots(figsize=(6, 3.6))
        if not plot_size_distribution(ax, self.table, self.statistics):
            ax.text(0.5, 0.5, "fewer than 2 measured objects", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(self._title(), fontsize=9)
        return ax

    def to_signal(self, image: str | None = None):
        """HyperSpy ``Signal2D`` label images with the micrographs' axes (nm where calibrated):
        one for ``image``, else a dict of all of them. Needs HyperSpy (``pip install hyperspy``)."""
        try:
            import hyperspy.api as hs
        except ImportError:
            raise EmcopilotError("Result.to_signal needs HyperSpy: pip install hyperspy") from None
        names = [image] if image is not None else self.images
        signals = {}
        for name in names:
            signal = hs.signals.Signal2D(self.labels[name])
            signal.metadata.General.title = f"{name} labels"
            size = self.pixel_size_nm(name)
            for axis, axis_name in zip(signal.axes_manager.signal_axes, ("x", "y")):
                axis.name = axis_name
                if size:
                    axis.scale, axis.units = size, "nm"
            signals[name] = signal
        return signals[image] if image is not None else signals

    def _title(self) -> str:
        recipe = (self.run_info.get("recipe") or {}).get("name")
        return f"{self.command}" + (f" {recipe}" if recipe else "") + f": {self.out}"

    def __repr__(self) -> str:
        pooled = self.statistics.get("pooled", {})
        unit = self.statistics.get("unit", "")
        mean = pooled.get("mean")
        size = f", mean diameter {mean:.3g} {unit}" if isinstance(mean, float) and np.isfinite(mean) else ""
        failed = f", {len(self.errors)} input(s) failed" if self.errors else ""
        return (f"<emcopilot Result of {self._title()}: {len(self.images)} micrograph(s), "
                f"{len(self.table)} objects{size}{failed}>")


class _Labels(Mapping):
    """The label images of a :class:`Result`, read from ``masks/`` on first access."""

    def __init__(self, result: Result):
        self._result = result

    def __getitem__(self, image: str) -> np.ndarray:
        cache = self._result._labels
        if image not in cache:
            if image not in self._result.images:
                raise KeyError(f"{image!r}: no such micrograph in {self._result.out}; "
                               f"they are {', '.join(self._result.images[:5])}")
            import tifffile
            from ..analysis.measure import mask_file_name
            cache[image] = np.asarray(tifffile.imread(self._result.out / "masks" / mask_file_name(image)))
        return cache[image]

    def __iter__(self):
        return iter(self._result.images)

    def __len__(self) -> int:
        return len(self._result.images)


# ---------------------------------------------------------------------- the commands


def _out(out: str | Path | None, command: str) -> Path:
    if out is not None:
        return Path(out)
    folder = Path(tempfile.mkdtemp(prefix=f"emcopilot-{command}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    log.info("%s: writing to %s (removed at exit; pass out= to keep it)", command, folder)
    return folder


def _calibration(calibration: "str | Path | Mapping[str, float] | CalibrationTable | None") -> "CalibrationTable | None":
    """A :class:`CalibrationTable` from a CSV path, a ``{name: nm}`` mapping, or a table."""
    from ..io.calibration import CalibrationTable, read_calibration_table
    if calibration is None or isinstance(calibration, CalibrationTable):
        return calibration
    if isinstance(calibration, Mapping):
        from ..core.interfaces import Micrograph
        entries = {}
        for name, size in calibration.items():
            try:
                entries[str(name)] = Micrograph(np.zeros((2, 2)), pixel_size_nm=float(size)).pixel_size_nm
            except (TypeError, ValueError, EmcopilotError) as error:
                raise InputError(f"calibration[{name!r}]: {error}") from None
        return CalibrationTable(entries, source="calibration mapping")
    return read_calibration_table(calibration)


def _pixel_size(pixel_size_nm: float | None) -> float | None:
    if pixel_size_nm is None:
        return None
    import math
    try:
        value = float(pixel_size_nm)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size_nm: expected a number of nm, got {pixel_size_nm!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"pixel_size_nm must be a finite number of nm above 0, got {pixel_size_nm!r}")
    return value


def run(recipe: Any, images: Any, out: str | Path | None = None, *, profile: str | None = None,
        pixel_size_nm: float | None = None, calibration: Any = None, max_minutes: float | None = None,
        force: str | None = None, device: str = "auto", progress: bool = True,
        recursive: bool = False, priors_from: str | Path | None = None,
        scale_bar_nm: float | None = None) -> Result:
    """The closed loop on unlabelled ``images``, as ``emcopilot run``: extract priors, learn their
    contrast, synthesise labelled micrographs, train a segmenter, measure the images.

    ``recipe`` is a built-in recipe's name, a YAML path or a :class:`~emcopilot.core.recipe.Recipe`.
    ``pixel_size_nm`` is the scale of images without one (it overrides theirs, as the command's
    ``--pixel-size-nm``); ``calibration`` per-image pixel sizes (a CSV path or ``{name: nm}``),
    which win over both; ``scale_bar_nm`` the length of the scale bars burned into exported
    images whose label cannot be read (:mod:`emcopilot.io.scale_bar`). ``priors_from`` is a folder of hand-corrected label images (named as
    ``masks/``; :mod:`emcopilot.pipeline.corrections`) that replace the extractor's priors of their
    micrographs. Re-running with the same ``out`` reuses the stages already done.
    """
    from .loop import Loop
    from ..core.recipe import Recipe, load_recipe
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    folder = _out(out, "run")
    loop_result = Loop(recipe, images, folder, profile=profile, pixel_size_nm=_pixel_size(pixel_size_nm),
                       calibration=_calibration(calibration), force=force, device=device, progress=progress,
                       max_minutes=max_minutes, recursive=recursive, priors_from=priors_from,
                       scale_bar_nm=scale_bar_nm).run()
    return Result(folder, table=loop_result.table, micrographs=loop_result.micrographs,
                  statistics=loop_result.statistics)


def extract(recipe: Any, images: Any, out: str | Path | None = None, *, pixel_size_nm: float | None = None,
            calibration: Any = None, progress: bool = True, recursive: bool = False,
            scale_bar_nm: float | None = None) -> Result:
    """The recipe's prior extractor only, as ``emcopilot extract``: masks, the particle table and
    ``prior.json`` (the morphology prior). An image without a scale gets an estimated one.

    It is :func:`run` stopped after its first two stages (``extract``, ``prior``): the same inputs,
    pixel sizes, stage folders and ``run.json`` schema, so ``run`` with the same recipe and
    inputs into the same ``out`` goes on from there. A micrograph the extractor fails on is a row
    of ``errors.csv``; the others go on."""
    from .loop import Loop
    from ..core.recipe import Recipe, load_recipe
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    folder = _out(out, "extract")
    loop_result = Loop(recipe, images, folder, pixel_size_nm=_pixel_size(pixel_size_nm),
                       calibration=_calibration(calibration), progress=progress, recursive=recursive,
                       scale_bar_nm=scale_bar_nm).extract()
    return Result(folder, table=loop_result.table, micrographs=loop_result.micrographs)


def segment(model: str | Path, images: Any, out: str | Path | None = None, *, pixel_size_nm: float | None = None,
            calibration: Any = None, device: str | None = None, params: Mapping[str, Any] | None = None,
            workers: int | None = None, scheduler: str | None = None, progress: bool = True,
            recursive: bool = False, scale_bar_nm: float | None = None) -> Result:
    """A trained model folder (a run's ``model/``) on ``images``, as ``emcopilot segment``.

    ``params`` overrides the segmenter's saved parameters for this batch (e.g.
    ``{"test_time_flips": 1}``); ``workers`` runs on a local Dask cluster of that many processes,
    ``scheduler`` on an existing one. An image without a scale gets the one ``run`` would estimate.
    """
    import json

    from .batch import cached_model, merge_parts, run_batch
    from ..io.inputs import gather
    from ..analysis.measure import mask_file_name
    from .models import read_manifest
    from .rundir import RunDirectory, refuse_run_folder, remove_stale_outputs, write_run_json
    from ..core.files import write_errors

    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    started = time.perf_counter()
    overrides = dict(params or {})
    cached_model(str(model), device, overrides)  # a model that cannot load stops here, before any work
    pixel_size_nm, calibration = _pixel_size(pixel_size_nm), _calibration(calibration)
    inputs = gather(images, recursive=recursive)
    if not inputs:
        raise InputError(f"images {_short(images)}: no supported image files found")
    folder = _out(out, "segment")
    refuse_run_folder(folder, "segment")
    with RunDirectory(folder):  # one command at a time per folder
        summaries = run_batch(inputs, Path(model), folder, pixel_size_nm=pixel_size_nm, calibration=calibration,
                              scale_bar_nm=scale_bar_nm,
                              device=device, workers=workers, scheduler=scheduler, progress=progress,
                              params=overrides)
        table = merge_parts(folder, summaries)
        done = [image for summary in summaries for image in summary["images"]]
        remove_stale_outputs(folder, [mask_file_name(image["name"]) for image in done],
                             [Path(image["part"]).name for image in done])
        errors = [error for summary in summaries for error in summary["errors"]]
        write_errors(folder / "errors.csv", errors)
        seconds = time.perf_counter() - started
        megapixels = sum(image["shape"][0] * image["shape"][1] for image in done) / 1e6
        manifest = {k: v for k, v in read_manifest(Path(model)).items() if k != "path"}
        recipe_file = Path(model) / "recipe.json"
        write_run_json(
            folder, "segment",
            recipe=json.loads(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else None,
            plugins={"segmenter": {"name": manifest.get("plugin"), "distribution": manifest.get("distribution"),
                                   "version": manifest.get("version")}},
            inputs=[item.record() for item in inputs],
            images={image["name"]: {k: v for k, v in image.items() if k not in ("name", "part")} for image in done},
            errors=errors, timings_s={"total": seconds},
            throughput={"images_per_s": len(done) / seconds if seconds else None,
                        "megapixels_per_s": megapixels / seconds if seconds else None},
            model=str(model), model_manifest=manifest,
            model_config=json.loads((Path(model) / "config.json").read_text(encoding="utf-8")),
            param_overrides=overrides, execution={"workers": workers, "scheduler": scheduler},
            calibration_table=calibration.as_dict() if calibration is not None else None)
    return Result(folder, table=table)


def load_run(out: str | Path) -> Result:
    """The :class:`Result` of a finished ``run``, ``extract`` or ``segment`` from its folder."""
    return Result(out)


def _short(images: Any) -> str:
    text = repr(images) if not isinstance(images, (list, tuple)) else repr([str(i) if isinstance(i, (str, Path))
                                                                             else type(i).__name__ for i in images])
    return text if len(text) <= 120 else text[:117] + "..."
