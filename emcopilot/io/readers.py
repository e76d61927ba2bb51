"""Micrograph readers with calibration.

Microscope formats (``.dm3 .dm4 .emd .ser .emi .mrc .hspy`` and calibrated
``.tif``) are read with rosettasciio, which knows each vendor's metadata;
plain images (``.png .jpg``, uncalibrated ``.tif``) with tifffile/imageio.
Every reader returns :class:`~emcopilot.core.interfaces.Micrograph` objects in
float32 with ``pixel_size_nm`` from the file, or ``None`` when the file has no
spatial calibration. Stacks become one micrograph per frame, named ``file#k``.
"""
from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from ..core.errors import InputError, ReadError
from ..core.interfaces import Micrograph

if TYPE_CHECKING:
    from .calibration import CalibrationTable

log = logging.getLogger(__name__)

#: extension -> rosettasciio plugin module
RSCIIO_READERS = {
    ".dm3": "rsciio.digitalmicrograph",
    ".dm4": "rsciio.digitalmicrograph",
    ".emd": "rsciio.emd",
    ".ser": "rsciio.tia",
    ".emi": "rsciio.tia",
    ".mrc": "rsciio.mrc",
    ".hspy": "rsciio.hspy",
    ".tif": "rsciio.tiff",
    ".tiff": "rsciio.tiff",
}
PLAIN_IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp"}
SUPPORTED_EXTENSIONS = set(RSCIIO_READERS) | PLAIN_IMAGE_EXTENSIONS

#: length unit -> nanometres
NM_PER_UNIT = {
    "m": 1e9, "cm": 1e7, "mm": 1e6, "µm": 1e3, "μm": 1e3, "um": 1e3, "micron": 1e3,
    "nm": 1.0, "\u00c5": 0.1, "\u212b": 0.1, "A": 0.1, "angstrom": 0.1, "ang": 0.1, "pm": 1e-3,
}

#: Frames larger than this (pixels) are refused rather than exhausting memory.
MAX_PIXELS = 16384 * 16384


def to_nm(value: float, unit: Any) -> float | None:
    """Convert a length with a unit string to nm; ``None`` if the unit is not a length."""
    if unit is None or isinstance(value, bool):
        return None
    key = str(unit).strip()
    factor = NM_PER_UNIT.get(key, NM_PER_UNIT.get(key.lower()))
    try:
        length = float(value) * factor if factor is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return length if length is not None and np.isfinite(length) else None


def to_grey(data: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """RGB(A) to grey (luminance, ITU-R BT.601).

    rsciio returns colour as a structured dtype; plain readers as a trailing
    axis of 3 or 4 channels (``channels_last``).
    """
    data = np.asarray(data)
    if data.dtype.names is not None:
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
        channels_last = True
    if channels_last and data.ndim == 3 and data.shape[-1] in (3, 4):
        rgb = data[..., :3].astype(np.float32)
        return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if channels_last and data.ndim == 3 and data.shape[-1] == 1:
        return data[..., 0]
    return data


def _check_pixels(data: np.ndarray, label: str) -> np.ndarray:
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if np.iscomplexobj(data):
        raise ReadError(f"{label}: complex-valued pixels ({data.dtype}); export the amplitude or phase first")
    if not np.issubdtype(data.dtype, np.number):
        raise ReadError(f"{label}: pixel type {data.dtype} is not numeric")
    if data.size == 0 or min(data.shape) < 2:
        raise ReadError(f"{label}: the image is {'x'.join(map(str, data.shape))} pixels; need at least 2x2")
    _check_frame_size(data.shape, label)
    if data.dtype == np.uint64 or data.dtype == np.int64:
        if data.size and np.abs(data).max() > 2**24:
            warnings.warn(f"{label}: {data.dtype} values above 2^24 lose precision in float32", stacklevel=3)
    out = data.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.all():
        raise ReadError(f"{label}: every pixel is NaN or infinite")
    if bad.any():
        raise ReadError(f"{label}: {int(bad.sum())} of {bad.size} pixels are NaN or infinite")
    return out


def _number_or_text(value: Any) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return str(value)


def _calibration(axes: Sequence[dict], label: str) -> tuple[float | None, dict[str, Any]]:
    """Pixel size in nm from the two signal axes; records what was found."""
    spatial = [axis for axis in axes if not axis.get("navigate", False)][-2:]
    sizes = [to_nm(axis.get("scale", 1.0), axis.get("units")) for axis in spatial]
    record: dict[str, Any] = {"axes": [{"name": str(a.get("name")), "scale": _number_or_text(a.get("scale", 1.0)),
                                        "units": str(a.get("units"))} for a in spatial]}
    if len(sizes) != 2 or any(size is None or not np.isfinite(size) or size <= 0 for size in sizes):
        return None, record
    row_nm, col_nm = sizes
    if not np.isclose(row_nm, col_nm, rtol=1e-3):
        mean = (row_nm + col_nm) / 2
        warnings.warn(f"{label}: non-square pixels ({col_nm:.5g} x {row_nm:.5g} nm); "
                      f"using the mean {mean:.5g} nm", stacklevel=3)
        record["non_square_pixels_nm"] = [col_nm, row_nm]
        return mean, record
    return col_nm, record


def _modality(metadata: dict) -> str | None:
    instrument = metadata.get("Acquisition_instrument", {}) or {}
    for key in ("TEM", "SEM"):
        detector = (instrument.get(key, {}) or {}).get("Detector", {}) or {}
        for name in detector:
            if "haadf" in str(name).lower():
                return "haadf-stem"
    title = str(metadata.get("General", {}).get("title", "")).lower()
    if "haadf" in title:
        return "haadf-stem"
    if "bf" in title.split() or "bright" in title:
        return "bf-stem"
    return None


def _check_frame_size(shape: Sequence[int], label: str) -> None:
    """Refuse a frame over :data:`MAX_PIXELS` before any of its pixels is read."""
    height, width = int(shape[-2]), int(shape[-1])
    if height * width > MAX_PIXELS:
        raise ReadError(f"{label}: {width}x{height} pixels exceeds the limit of {MAX_PIXELS:,} pixels per frame "
                        f"({MAX_PIXELS * 4 / 2**30:.0f} GiB as float32); crop or bin it first")


def _frames(data: Any) -> Iterator[tuple[int | None, Any]]:
    """Split an n-D signal (numpy or lazy dask) into 2-D frames; navigation axes become frame indices."""
    if data.ndim == 2:
        yield None, data
        return
    frames = data.reshape((-1,) + tuple(data.shape[-2:]))
    for index in range(frames.shape[0]):
        yield index, frames[index]


def _materialise(data: Any, label: str, module_name: str) -> np.ndarray:
    try:
        # synchronous: inside a dask.distributed worker the default scheduler would be the cluster,
        # which cannot ship the reader's open file handle
        return np.asarray(data.compute(scheduler="synchronous") if hasattr(data, "compute") else data)
    except Exception as error:  # truncated data surfaces only when the pixels are read
        raise ReadError(f"{label}: {module_name} could not read the pixels: {type(error).__name__}: {error}") from None


def _read_rsciio(path: Path, label: str) -> list[Micrograph]:
    """Read lazily, check every frame's size, then load frame by frame."""
    module_name = RSCIIO_READERS[path.suffix.lower()]
    try:
        reader = importlib.import_module(module_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            signals = reader.file_reader(str(path), lazy=True)
    except Exception as error:
        raise ReadError(f"{label}: {module_name} could not read it: {type(error).__name__}: {error}") from None
    micrographs = []
    images = [s for s in signals if getattr(s["data"], "ndim", 0) >= 2]
    if not images:
        raise ReadError(f"{label}: {module_name} could not read it: the file holds no image")
    for signal_index, signal in enumerate(images):
        data = signal["data"]
        _check_frame_size(data.shape, label)
        if data.dtype.names is not None:  # colour: a structured dtype
            data = to_grey(_materialise(data, label, module_name), channels_last=False)
        pixel_size_nm, calibration = _calibration(list(signal.get("axes", [])), label)
        metadata = signal.get("metadata", {}) or {}
        for frame_index, frame in _frames(data):
            parts = [str(signal_index)] if len(images) > 1 else []
            parts += [str(frame_index)] if frame_index is not None else []
            name = path.name + ("#" + ".".join(parts) if parts else "")
            micrographs.append(_micrograph(_materialise(frame, label, module_name), pixel_size_nm, path, name,
                                           label, reader=module_name, calibration=calibration,
                                           modality=_modality(metadata),
                                           title=str(metadata.get("General", {}).get("title", ""))))
    return micrographs


def _read_plain(path: Path, label: str) -> list[Micrograph]:
    try:
        from PIL import Image
        # PIL's own decompression-bomb guard (2x its MAX_IMAGE_PIXELS, ~179 Mpx) would refuse frames within
        # ours with a message about a limit that is not the one applied; make the two limits one
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
        with Image.open(path) as header:  # reads the header only
            _check_frame_size(header.size[::-1], label)
    except ReadError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own guard fires on even larger headers
        raise ReadError(f"{label}: exceeds the limit of {MAX_PIXELS:,} pixels per frame ({error})") from None
    except Exception:
        pass  # not a format PIL knows: imageio decides below
    try:
        import imageio.v3 as iio
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = iio.imread(path)
    except Exception as error:
        raise ReadError(f"{label}: imageio could not read it: {type(error).__name__}: {error}") from None
    data = to_grey(data)
    if data.ndim == 3:
        return [_micrograph(frame, None, path, f"{path.name}#{index}", label, reader="imageio")
                for index, frame in enumerate(data)]
    return [_micrograph(data, None, path, path.name, label, reader="imageio")]


def _micrograph(frame: np.ndarray, pixel_size_nm: float | None, path: Path, name: str, label: str,
                **metadata: Any) -> Micrograph:
    pixels = _check_pixels(np.asarray(frame), f"{label}" + (name[len(path.name):] if name != path.name else ""))
    try:
        return Micrograph(pixels, pixel_size_nm=pixel_size_nm, modality=metadata.get("modality"),
                          source=path, name=name, metadata=metadata)
    except InputError as error:
        raise ReadError(str(error)) from None


def read_micrograph(path: str | os.PathLike, pixel_size_nm: float | None = None,
                    calibration: "CalibrationTable | None" = None, name: str | None = None,
                    scale_bar_nm: float | None = None) -> list[Micrograph]:
    """Read one file into one micrograph per frame.

    ``pixel_size_nm`` overrides the file's calibration (or supplies a missing one); an entry for
    this file in a ``calibration`` table (:mod:`emcopilot.io.calibration`) wins over both. Each
    micrograph's ``metadata["pixel_size_source"]`` says which applied (``file``,
    ``--pixel-size-nm``, ``calibration table``), and is absent when there is no pixel size.
    ``name`` replaces the file name in the micrographs' names (see :func:`input_names`).
    In image exports (PNG, JPEG, BMP, TIFF) a burned-in scale bar is found and painted over, and
    gives the pixel size of frames that have none (:mod:`emcopilot.io.scale_bar`; ``scale_bar_nm``
    is the bar's length when its label cannot be read; source ``scale bar``).
    Raises :class:`ReadError` naming the file and the reader that failed.
    """
    path = Path(path)
    label = str(path)
    try:
        if path.is_symlink() and not path.exists():
            raise ReadError(f"{label}: a broken or looping symbolic link")
        if not path.exists():
            raise ReadError(f"{label}: no such file")
        if path.is_dir():
            raise ReadError(f"{label}: is a directory; pass the files or use read_micrographs()")
        size = path.stat().st_size
    except OSError as error:  # permission denied, symlink loop, ...
        raise ReadError(f"{label}: cannot access it: {error.strerror or error}") from None
    if size == 0:
        raise ReadError(f"{label}: the file is empty (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ReadError(f"{label}: permission denied")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ReadError(f"{label}: unsupported extension {suffix or '(none)'}; supported: "
                        f"{', '.join(sorted(SUPPORTED_EXTENSIONS))}")
    if suffix in (".tif", ".tiff"):
        try:
            micrographs = _read_rsciio(path, label)
        except ReadError as rsciio_error:
            try:
                micrographs = _read_plain(path, label)
            except ReadError:
                raise rsciio_error from None
    elif suffix in RSCIIO_READERS:
        micrographs = _read_rsciio(path, label)
    else:
        micrographs = _read_plain(path, label)
    if not micrographs:  # e.g. a stack of zero frames: say so instead of measuring nothing in silence
        raise ReadError(f"{label}: holds no image frames")
    if name is not None and name != path.name:
        for micrograph in micrographs:
            micrograph.name = name + micrograph.name[len(path.name):]
    apply_pixel_size(micrographs, pixel_size_nm, calibration, path, label)
    if suffix in PLAIN_IMAGE_EXTENSIONS or suffix in (".tif", ".tiff"):
        from .scale_bar import apply_scale_bar
        try:
            apply_scale_bar(micrographs, label, scale_bar_nm)
        except InputError as error:
            raise ReadError(f"{label}: {error}") from None
    return micrographs


def apply_pixel_size(micrographs: Sequence[Micrograph], pixel_size_nm: float | None,
                     calibration: "CalibrationTable | None", key: str | os.PathLike, label: str) -> None:
    """The precedence of :func:`read_micrograph`, in place: an entry for ``key`` (a path or an image
    name) in the ``calibration`` table wins over ``pixel_size_nm``, which wins over the micrographs'
    own calibration. ``metadata["pixel_size_source"]`` records which applied: ``file`` (their own),
    ``--pixel-size-nm`` or ``calibration table``."""
    source = "--pixel-size-nm"
    table_entry = calibration.pixel_size_for(key) if calibration is not None else None
    if table_entry is not None:
        pixel_size_nm, source = table_entry, "calibration table"
    for micrograph in micrographs:
        if micrograph.pixel_size_nm is not None:
            micrograph.metadata.setdefault("pixel_size_source", "file")
    if pixel_size_nm is not None:
        for micrograph in micrographs:
            micrograph.metadata["file_pixel_size_nm"] = micrograph.pixel_size_nm
            micrograph.metadata["pixel_size_override"] = True
            micrograph.metadata["pixel_size_source"] = source
            try:
                micrograph.pixel_size_nm = Micrograph(micrograph.data[:2, :2], pixel_size_nm).pixel_size_nm
            except InputError as error:
                raise ReadError(f"{label}: {source}: {error}") from None


def expand_inputs(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Files named directly, plus supported files inside named directories (sorted).

    In a directory, a ``.emi`` is skipped when its ``.ser`` files are present
    (they hold the same images); other files that no reader takes are named in
    a warning (hidden files are skipped silently). Sub-folders are read with
    ``recursive`` (symlinked folders are not followed, so a link loop cannot
    recurse) and otherwise named in a warning. A broken link or a link loop
    in a directory is kept as an input, so that it fails when read and is
    listed with the reason in ``errors.csv`` like any unreadable file.
    """
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files += _folder_inputs(path, recursive)
        else:
            files.append(path)
    return files


def _folder_inputs(folder: Path, recursive: bool) -> list[Path]:
    files: list[Path] = []
    folders = [folder]
    while folders:
        path = folders.pop(0)
        entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        visible = [p for p in entries if p.is_file()]
        found = [p for p in visible if p.suffix.lower() in SUPPORTED_EXTENSIONS]
        unread = [p.name for p in visible if p.suffix.lower() not in SUPPORTED_EXTENSIONS]
        if unread:
            log.warning("%s: skipped %d file(s) no reader takes: %s%s", path, len(unread),
                        ", ".join(unread[:5]), ", ..." if len(unread) > 5 else "")
        broken = [p for p in entries if p.is_symlink() and not p.exists()]  # dangling, or a loop
        if broken:
            log.warning("%s: %d link(s) lead nowhere (broken or a loop): %s", path, len(broken),
                        ", ".join(p.name for p in broken[:5]))
        subfolders = [p for p in entries if p.is_dir()]
        if recursive:
            real = [p for p in subfolders if not p.is_symlink()]
            if len(real) < len(subfolders):
                log.warning("%s: not following %d linked folder(s): %s", path, len(subfolders) - len(real),
                            ", ".join(p.name for p in subfolders if p.is_symlink())[:200])
            folders += real
        elif subfolders:
            log.warning("%s: skipped %d sub-folder(s) (give --recursive to read them): %s%s", path,
                        len(subfolders), ", ".join(p.name for p in subfolders[:5]), ", ..." if len(subfolders) > 5 else "")
        sers = {p.stem.rsplit("_", 1)[0] for p in found if p.suffix.lower() == ".ser"}
        files += sorted([p for p in found if not (p.suffix.lower() == ".emi" and p.stem in sers)] + broken)
    return files


def input_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A name for each input that no other input shares: its file name, or, where two inputs share
    one (``A/x.png``, ``B/x.png``), the shortest end of its path that tells them apart.

    These names are the ``image`` column of the particle table and name every per-image output.
    (The same file given twice keeps its full path twice.)
    """
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    names: list[str] = [""] * len(parts)
    groups, depth = [list(range(len(parts)))], 1
    while groups:
        colliding = []
        for group in groups:
            by_tail: dict[tuple[str, ...], list[int]] = {}
            for index in group:
                by_tail.setdefault(parts[index][-depth:], []).append(index)
            for tail, members in by_tail.items():
                if len(members) == 1 or all(depth >= len(parts[i]) for i in members):
                    for index in members:
                        names[index] = Path(*tail).as_posix()
                else:
                    colliding.append(members)
        groups, depth = colliding, depth + 1
    return names


def read_micrographs(paths: Iterable[str | os.PathLike], pixel_size_nm: float | None = None,
                     errors: list[tuple[Path, str]] | None = None,
                     calibration: "CalibrationTable | None" = None,
                     scale_bar_nm: float | None = None) -> list[Micrograph]:
    """Read many files. With an ``errors`` list, failures are appended and the rest continue."""
    micrographs: list[Micrograph] = []
    paths = expand_inputs(paths)
    for path, name in zip(paths, input_names(paths)):
        try:
            micrographs += read_micrograph(path, pixel_size_nm=pixel_size_nm, calibration=calibration, name=name,
                                           scale_bar_nm=scale_bar_nm)
        except ReadError as error:
            if errors is None:
                raise
            log.warning("%s", error)
            errors.append((path, str(error)))
    return micrographs
