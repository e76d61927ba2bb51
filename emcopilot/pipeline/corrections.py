"""Hand-corrected priors: label images a person fixed, which a next run learns from.

A run's ``masks/`` are its answer; a microscopist who deletes the false particles and paints
the missed ones (in napari, with the emcopilot widget, or in Fiji) saves the result as a
**corrections folder**: one label TIFF per corrected micrograph, named as in ``masks/``
(:func:`emcopilot.analysis.measure.mask_file_name`: ``<image>.tif``), 0 for background and a value
per object. ``emcopilot run ... --priors-from FOLDER`` (``emcopilot.run(...,
priors_from=FOLDER)``) then takes those label images as the priors of the micrographs they
belong to, in place of the prior extractor's (the other micrographs keep the extractor's),
and everything downstream (morphology prior, contrast fits, synthetic training set,
segmenter) learns from them. Such a run is no longer label-free, and its ``run.json``
(``priors``) and report say so.

Objects are the connected regions of each label value (two blobs painted with one value are
two particles); for an atoms recipe each region's centroid is an atom.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import InputError
from ..core.interfaces import Instances, Micrograph

log = logging.getLogger(__name__)

#: where the napari widget saves corrections inside a run folder
CORRECTIONS_DIR = "corrections"


def correction_files(folder: str | Path, micrographs: Sequence[Micrograph]) -> dict[int, Path]:
    """The correction file of each micrograph that has one, by index.

    Raises :class:`InputError` when ``folder`` is not a folder, or when it holds label files
    and none of them belongs to any micrograph (most often: named after the input instead of
    its mask); files that match no micrograph are named in a warning.
    """
    from ..analysis.measure import mask_file_name
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--priors-from {folder}: not a folder of corrected label images")
    present = {path.name: path for path in folder.iterdir() if path.suffix.lower() in (".tif", ".tiff")}
    found = {index: present[mask_file_name(m.name)] for index, m in enumerate(micrographs)
             if mask_file_name(m.name) in present}
    unused = sorted(set(present) - {path.name for path in found.values()})
    if present and not found:
        expected = ", ".join(mask_file_name(m.name) for m in micrographs[:3])
        raise InputError(f"--priors-from {folder}: none of its {len(present)} label file(s) belongs to an input "
                         f"micrograph; they are named as the run's masks/, e.g. {expected}")
    if unused:
        log.warning("--priors-from %s: %d file(s) match no input micrograph: %s%s", folder, len(unused),
                    ", ".join(unused[:5]), ", ..." if len(unused) > 5 else "")
    return found


def read_correction(path: Path, micrograph: Micrograph, kind: str = "particles") -> Instances:
    """A corrected label image as priors (score 1 for every object: a person drew them)."""
    import tifffile
    from skimage.measure import label as connected, regionprops

    try:
        labels = np.asarray(tifffile.imread(path))
    except Exception as error:
        raise InputError(f"{path}: cannot read it as a label TIFF: {type(error).__name__}: {error}") from None
    labels = np.squeeze(labels)
    if labels.shape != micrograph.shape:
        raise InputError(f"{path}: a {'x'.join(map(str, labels.shape))} label image for {micrograph.name}, which is "
                         f"{'x'.join(map(str, micrograph.shape))} pixels")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(f"{path}: label values must be whole numbers (0 background), got {labels.dtype}")
    if np.any(labels < 0):
        raise InputError(f"{path}: negative label values")
    regions = connected(labels.astype(np.int64), background=0, connectivity=1).astype(np.int32)
    count = int(regions.max())
    points = None
    if kind == "atoms":
        points = np.array([r.centroid for r in regionprops(regions)], np.float64).reshape(-1, 2)
    return Instances(labels=regions, points=points, scores=np.ones(count, np.float32),
                     metadata={"source": "correction", "file": str(path)})


def record(folder: str | Path | None, files: dict[int, Path], micrographs: Sequence[Micrograph]) -> dict[str, Any]:
    """``run.json``'s ``priors``: where the priors came from, per micrograph."""
    if folder is None:
        return {"source": "prior extractor", "label_free": True}
    from ..core.files import sha256_file
    return {"source": "corrections" if len(files) == len(micrographs) else "corrections and prior extractor",
            "label_free": False, "folder": str(folder),
            "corrected": {micrographs[i].name: {"file": path.name, "sha256": sha256_file(path)}
                          for i, path in sorted(files.items())},
            "extracted": [m.name for i, m in enumerate(micrographs) if i not in files]}
