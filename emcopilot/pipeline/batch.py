"""Segmenting many files: one task per input file, serially or on a Dask cluster.

Each task reads one file (or takes one in-memory image, :mod:`emcopilot.io.inputs`), segments every frame, writes ``masks/<image>.tif``
and ``parts/<image>.parquet`` (its rows of the particle table) and returns a
small summary; a failure is recorded for that file only and the batch goes
on. At the end the parts are merged, in input order, into ``particles.csv``
and ``particles.parquet``. With ``workers`` a local Dask cluster (processes,
one thread each) runs the tasks; with ``scheduler`` an existing
``dask.distributed`` cluster does (its workers must see the same paths).
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from ..io.inputs import Input

_MODELS: dict[tuple[str, str | None, str], Any] = {}


def cached_model(model_dir: str, device: str | None, params: Mapping[str, Any] | None = None) -> Any:
    """The segmenter of ``model_dir`` (with ``params`` overriding its own), loaded once per process."""
    key = (str(Path(model_dir).resolve()), device, json.dumps(params or {}, sort_keys=True))
    if key not in _MODELS:
        from .models import load_model
        _MODELS[key] = load_model(Path(model_dir), device, params=params)
    return _MODELS[key]


def segment_file(source: "str | Input", model_dir: str, out: str, pixel_size_nm: float | None = None,
                 device: str | None = None, params: Mapping[str, Any] | None = None,
                 calibration: Any = None, name: str | None = None,
                 scale_bar_nm: float | None = None) -> dict[str, Any]:
    """Segment one input (a file's path, named ``name``, or an :class:`~emcopilot.io.inputs.Input`);
    never raises for a bad input (the error is returned)."""
    from ..io.inputs import Input
    from ..analysis.measure import mask_file_name, particle_table
    from ..specimen.pixel_size import image_record, reported_pixel_size_nm
    from ..core.files import atomic_path, write_label_tiff
    import numpy as np

    item = source if isinstance(source, Input) else Input(name or Path(source).name, path=Path(source))
    path = item.label
    out_dir = Path(out)
    summary: dict[str, Any] = {"path": path, "images": [], "errors": []}
    try:
        micrographs = item.read(pixel_size_nm, calibration, scale_bar_nm)
        segmenter = cached_model(model_dir, device, params)
    except Exception as error:  # a corrupt file (or a model that cannot load) fails this task only
        summary["errors"].append((path, _describe(error)))
        return summary
    for micrograph in micrographs:
        started = time.perf_counter()
        try:
            estimate_missing_scale(micrograph, getattr(segmenter, "sample", None))
            instances = segmenter.predict(micrograph)
            table = particle_table(instances, micrograph)
            labels = instances.labels if instances.labels is not None else np.zeros(micrograph.shape, np.int32)
            write_label_tiff(out_dir / "masks" / mask_file_name(micrograph.name), labels,
                             reported_pixel_size_nm(micrograph))
            part = out_dir / "parts" / (mask_file_name(micrograph.name)[:-4] + ".parquet")
            part.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(part) as temporary:
                table.to_parquet(temporary, index=False)
        except Exception as error:
            summary["errors"].append((f"{path} ({micrograph.name})", _describe(error)))
            continue
        summary["images"].append({"name": micrograph.name, "part": str(part),
                                  **image_record(micrograph, objects=int(len(table)),
                                                 seconds=time.perf_counter() - started)})
    return summary


def estimate_missing_scale(micrograph: Any, sample: Any) -> None:
    """Give an uncalibrated micrograph the pixel size ``run`` would: the one rule of
    :func:`emcopilot.specimen.pixel_size.resolve_pixel_size`, applied in place (``pixel_size_source``
    ``estimated``, ``pixel_size_estimate`` with its uncertainty, ``pixel_size_credible`` false where
    it is not credible). Nothing changes for a calibrated micrograph or a model without a sample;
    raises :class:`~emcopilot.core.errors.InputError` when nothing in the image gives a scale."""
    if micrograph.pixel_size_nm is not None or sample is None or not getattr(sample, "diameter_nm", None):
        return
    from ..core.errors import InputError
    from ..specimen.pixel_size import apply_pixel_size, resolve_pixel_size

    record = resolve_pixel_size(micrograph, sample)
    if record["pixel_size_nm"] is None:
        raise InputError(f"{micrograph.name}: {record['reason']}; give its pixel size with --pixel-size-nm or "
                         f"--calibration table.csv")
    apply_pixel_size(micrograph, record)


def _describe(error: Exception) -> str:
    from ..core.errors import EmcopilotError
    if isinstance(error, EmcopilotError):
        return str(error)
    where = traceback.extract_tb(error.__traceback__)[-1]
    return f"{type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno})"


def _key(name: str) -> str:
    """A Dask task key's part from an image name (no path separators or spaces)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-64:]


def _set_worker_threads() -> None:
    import os
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def run_batch(paths: "Sequence[Path | Input]", model_dir: Path, out: Path, *, pixel_size_nm: float | None = None,
              device: str | None = None, workers: int | None = None, scheduler: str | None = None,
              progress: bool = True, params: Mapping[str, Any] | None = None,
              calibration: Any = None, scale_bar_nm: float | None = None) -> list[dict[str, Any]]:
    """Run :func:`segment_file` over ``paths`` (files, or :class:`~emcopilot.io.inputs.Input` items from
    :func:`~emcopilot.io.inputs.gather`); summaries come back in input order. ``calibration`` is an
    :class:`emcopilot.io.calibration.CalibrationTable` of per-file pixel sizes."""
    from tqdm.auto import tqdm

    from ..io.inputs import Input, gather
    params = dict(params) if params else None
    items = list(paths) if all(isinstance(p, Input) for p in paths) else gather(paths)
    arguments = [(item, str(model_dir), str(out), pixel_size_nm, device, params, calibration, None, scale_bar_nm)
                 for item in items]
    if not workers and not scheduler:
        return [segment_file(*a) for a in tqdm(arguments, desc="segment", disable=not progress)]
    from dask.distributed import Client, LocalCluster, as_completed
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        client.run(_set_worker_threads)
        futures = [client.submit(segment_file, *a, key=f"segment-{index}-{_key(a[0].name)}", pure=False)
                   for index, a in enumerate(arguments)]
        order = {future.key: index for index, future in enumerate(futures)}
        results: list[dict[str, Any] | None] = [None] * len(futures)
        for future in tqdm(as_completed(futures), total=len(futures), desc="segment", disable=not progress):
            index = order[future.key]
            try:
                results[index] = future.result()
            except Exception as error:  # a worker died: record it, keep going
                label = arguments[index][0].label
                results[index] = {"path": label, "images": [], "errors": [(label, f"worker failed: {_describe(error)}")]}
        return results  # type: ignore[return-value]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def merge_parts(out: Path, summaries: Iterable[dict[str, Any]]):
    """Concatenate the per-image parts (input order) into the final tables."""
    import pandas as pd
    from ..analysis.measure import write_table
    tables = [pd.read_parquet(image["part"]) for summary in summaries for image in summary["images"]]
    return write_table(out, tables)
