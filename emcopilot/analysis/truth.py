"""Human truth from files, and which truth file belongs to which image.

Readers: ``points`` (CSVs with ``X`` = column, ``Y`` = row), ``yolo``
(``<stem>.txt`` with normalised ``class cx cy w h``) and ``masks`` (label or
binary ``.tif`` images). :func:`pair_truth_files` pairs them with image names by
stem, then by a unique leading token.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.errors import InputError
from ..io.readers import SUPPORTED_EXTENSIONS as IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- truth readers

def read_points_truth(path: Path) -> np.ndarray:
    """Atom centres ``(row, column)`` from a CSV with ``X`` (column) and ``Y`` (row)."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as error:
        raise InputError(f"{path}: cannot read as CSV: {error}") from None
    columns = {str(c).strip().lower(): c for c in table.columns}
    if "x" not in columns or "y" not in columns:
        raise InputError(f"{path}: needs columns X (column) and Y (row); found {', '.join(map(str, table.columns))}")
    points = table[[columns["y"], columns["x"]]].to_numpy(float)
    if not np.isfinite(points).all():
        raise InputError(f"{path}: X/Y contain empty or non-numeric values")
    return points


def read_yolo_truth(path: Path, image_shape: tuple[int, int]) -> np.ndarray:
    """Boxes ``x0, y0, x1, y1`` (pixels) from a YOLO ``class cx cy w h`` file (normalised)."""
    height, width = image_shape
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            _, cx, cy, w, h = (float(v) for v in fields[:5])
            if len(fields) < 5:
                raise ValueError
        except ValueError:
            raise InputError(f"{path}:{number}: expected 'class cx cy w h', got {line.strip()!r}") from None
        if not all(0 <= v <= 1.5 for v in (cx, cy, w, h)):
            raise InputError(f"{path}:{number}: values must be normalised to the image size, got {line.strip()!r}")
        rows.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return np.array(rows, float).reshape(-1, 4)


def read_mask_truth(path: Path) -> np.ndarray:
    """A label image from a ``.tif``/``.png``; a binary mask is split into connected objects."""
    import tifffile
    from scipy import ndimage

    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = tifffile.imread(path)
        else:
            import imageio.v3 as iio
            array = iio.imread(path)
    except Exception as error:
        raise InputError(f"{path}: cannot read the mask: {error}") from None
    array = np.squeeze(np.asarray(array))
    if array.ndim != 2:
        raise InputError(f"{path}: a mask must be a 2-D image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise InputError(f"{path}: mask values must be integers (labels) or 0/1, got {array.dtype}")
        array = array.astype(np.int64)
    if len(np.unique(array)) <= 2:  # binary: one object per connected component
        return ndimage.label(array > 0)[0].astype(np.int32)
    return array.astype(np.int32)


def image_shape(path: Path) -> tuple[int, int]:
    """Height and width of an image file, without decoding microscope metadata."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile
        with tifffile.TiffFile(path) as handle:
            shape = handle.pages[0].shape
    else:
        import imageio.v3 as iio
        shape = iio.improps(path).shape
    return int(shape[0]), int(shape[1])


# --------------------------------------------------------------------------- pairing files

def leading_token(name: str) -> str:
    """``021_HAADF_15nm.tif`` -> ``021``: the part of the stem before the first ``_ - .`` or space."""
    return re.split(r"[_\-. ]", Path(name).stem if "." in name else name, maxsplit=1)[0]


def image_stem(name: str) -> str:
    """File name without its image extension (``a.jpg`` -> ``a``; ``a.jpg.tif`` -> ``a``)."""
    name = name.split("#", 1)[0]
    while Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        name = name[: -len(Path(name).suffix)]
    return name


def pair_truth_files(image_names: Iterable[str], truth_files: Iterable[Path]) -> tuple[dict[str, Path], list[Path]]:
    """Match truth files to prediction image names.

    First by equal stem (``Cu1.txt`` <-> ``Cu1.jpg``), then by equal leading
    token when that is unique (``021_Results.csv`` <-> ``021_HAADF_....tif``).
    Returns ``({image name: truth file}, [truth files that match nothing])``.
    """
    images = sorted(set(image_names))
    by_stem = {image_stem(name): name for name in images}
    by_token: dict[str, list[str]] = {}
    for name in images:
        by_token.setdefault(leading_token(image_stem(name)), []).append(name)
    paired: dict[str, Path] = {}
    unmatched: list[Path] = []
    for path in sorted(truth_files):
        image = by_stem.get(path.stem)
        if image is None:
            candidates = by_token.get(leading_token(path.stem), [])
            image = candidates[0] if len(candidates) == 1 else None
        if image is None or image in paired:
            unmatched.append(path)
            continue
        paired[image] = path
    return paired, unmatched
