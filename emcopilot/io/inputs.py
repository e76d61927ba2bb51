"""What ``run``, ``extract`` and ``segment`` accept as images, from the shell or from Python.

A file, a folder of files (its supported images, sorted), a 2-D numpy array, a 3-D array (a
stack: one micrograph per frame; ``(H, W, 3|4)`` is a colour image and is made grey), a
:class:`~emcopilot.Micrograph`, or a HyperSpy ``Signal2D`` (lazy or not: its two signal axes
give the pixel size, its navigation axes are frames, its title is its name). A mapping of
names to arrays, micrographs or signals names them; a list mixes any of these.

:func:`gather` turns that into :class:`Input` items in order, each of which :meth:`Input.read`
turns into micrographs with the usual precedence of calibrations (a calibration table's entry,
then ``pixel_size_nm``, then the image's own) and :attr:`Input.sha256` fingerprints for
``run.json``. In-memory images never touch the disk as inputs: their pixels are hashed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.errors import InputError, ReadError
from ..core.interfaces import Micrograph

if TYPE_CHECKING:
    from .calibration import CalibrationTable


@dataclasses.dataclass
class Input:
    """One input: a file (``path``) or images held in memory (``micrographs``, of one ``kind``)."""

    name: str
    path: Path | None = None
    micrographs: list[Micrograph] = dataclasses.field(default_factory=list)
    kind: str = "file"

    @property
    def label(self) -> str:
        """How messages and ``errors.csv`` name it: the path as given, or ``name (kind)``."""
        return str(self.path) if self.path is not None else f"{self.name} ({self.kind})"

    @property
    def sha256(self) -> str:
        """The file's SHA-256, or that of the frames' shapes, pixels and pixel sizes."""
        if self.path is not None:
            from ..core.files import sha256_file
            return sha256_file(self.path)
        digest = hashlib.sha256()
        for micrograph in self.micrographs:
            data = np.ascontiguousarray(micrograph.data)
            digest.update(f"{data.shape}|{data.dtype}|{micrograph.pixel_size_nm!r}|".encode())
            digest.update(data.tobytes())
        return digest.hexdigest()

    def record(self) -> dict[str, Any]:
        """Its entry in ``run.json``'s ``inputs`` (``sha256`` ``None`` for a file that cannot be read)."""
        try:
            sha256: str | None = self.sha256
        except OSError:
            sha256 = None
        entry: dict[str, Any] = {"path": str(self.path) if self.path is not None else None, "sha256": sha256}
        if self.path is None:
            entry.update(name=self.name, kind=self.kind, frames=len(self.micrographs))
        return entry

    def read(self, pixel_size_nm: float | None = None, calibration: "CalibrationTable | None" = None,
             scale_bar_nm: float | None = None) -> list[Micrograph]:
        """Its micrographs (copies, for in-memory ones: the caller's objects are never changed).

        Arrays are searched for a burned-in scale bar as image exports are
        (:func:`emcopilot.io.readers.read_micrograph`); HyperSpy signals and micrographs carry their own
        calibration and are not."""
        from .readers import apply_pixel_size, read_micrograph
        if self.path is not None:
            return read_micrograph(self.path, pixel_size_nm=pixel_size_nm, calibration=calibration, name=self.name,
                                   scale_bar_nm=scale_bar_nm)
        frames = [dataclasses.replace(m, metadata=dict(m.metadata)) for m in self.micrographs]
        apply_pixel_size(frames, pixel_size_nm, calibration, self.name, self.label)
        if self.kind == "numpy array":
            from .scale_bar import apply_scale_bar
            apply_scale_bar(frames, self.label, scale_bar_nm)
        return frames


def is_signal(value: Any) -> bool:
    """A HyperSpy signal (duck-typed, so that HyperSpy is needed only by those who have one)."""
    return hasattr(value, "axes_manager") and hasattr(value, "data") and hasattr(value, "metadata")


def _from_array(array: np.ndarray, name: str) -> list[Micrograph]:
    from .readers import _check_pixels, _frames, to_grey
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        array = to_grey(array)
    if array.ndim not in (2, 3):
        raise InputError(f"{name}: a numpy array must be 2-D (one image) or 3-D (a stack of frames), "
                         f"got shape {array.shape}")
    frames = []
    for index, frame in _frames(array):
        frame_name = name if index is None else f"{name}#{index}"
        try:
            frames.append(Micrograph(_check_pixels(np.asarray(frame), frame_name), name=frame_name,
                                     metadata={"input": "numpy array"}))
        except (InputError, ReadError) as error:
            raise InputError(str(error)) from None
    return frames


def _from_micrograph(micrograph: Micrograph, name: str) -> list[Micrograph]:
    from .readers import _check_pixels
    try:
        data = _check_pixels(np.asarray(micrograph.data), name)
    except ReadError as error:
        raise InputError(str(error)) from None
    return [dataclasses.replace(micrograph, data=data, name=name, metadata=dict(micrograph.metadata))]


def _from_signal(signal: Any, name: str) -> list[Micrograph]:
    """A HyperSpy ``Signal2D``'s frames at the scale of its signal axes."""
    from .readers import _calibration, _check_frame_size, _check_pixels, _frames, _materialise, _modality
    manager = signal.axes_manager
    if getattr(manager, "signal_dimension", 2) != 2:
        raise InputError(f"{name}: a HyperSpy signal with {manager.signal_dimension} signal dimension(s); "
                         f"an image is a Signal2D (e.g. signal.as_signal2D((0, 1)) or signal.T)")
    axes = [{"name": axis.name, "scale": axis.scale, "units": axis.units, "navigate": axis.navigate}
            for axis in (*manager.navigation_axes, *manager.signal_axes)]
    data = signal.data
    _check_frame_size(data.shape, name)
    pixel_size_nm, record = _calibration(axes, name)
    metadata = signal.metadata.as_dictionary()
    frames = []
    for index, frame in _frames(data):
        frame_name = name if index is None else f"{name}#{index}"
        try:
            pixels = _check_pixels(_materialise(frame, name, "hyperspy"), frame_name)
            frames.append(Micrograph(pixels, pixel_size_nm=pixel_size_nm, modality=_modality(metadata),
                                     name=frame_name,
                                     metadata={"input": "hyperspy signal", "calibration": record,
                                               "title": str(metadata.get("General", {}).get("title", ""))}))
        except (InputError, ReadError) as error:
            raise InputError(str(error)) from None
    return frames


def _in_memory(value: Any, name: str) -> Input:
    if isinstance(value, Micrograph):
        return Input(name, micrographs=_from_micrograph(value, name), kind="Micrograph")
    if is_signal(value):
        return Input(name, micrographs=_from_signal(value, name), kind="hyperspy signal")
    if isinstance(value, np.ndarray):
        return Input(name, micrographs=_from_array(value, name), kind="numpy array")
    raise InputError(f"{name}: cannot read a {type(value).__name__} as an image; give a path, a folder, a numpy "
                     f"array, an emcopilot.Micrograph or a HyperSpy Signal2D")


def _default_name(value: Any, index: int) -> str:
    if isinstance(value, Micrograph) and value.name and (value.source is not None or value.name != "micrograph"):
        return value.name  # its own name (not the default of a nameless one)
    if is_signal(value):
        title = str(value.metadata.as_dictionary().get("General", {}).get("title", "")).strip()
        if title:
            return title
        return f"signal{index}"
    return f"image{index}"


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def gather(images: Any, *, recursive: bool = False) -> list[Input]:
    """``images`` (see the module's text) as :class:`Input` items, in order, each with a name no other shares.

    Files are named as by :func:`emcopilot.io.readers.input_names`; in-memory images by their mapping key,
    their own name (a ``Micrograph``'s, a signal's title) or ``image<k>`` (``k`` its place in the list).
    Raises :class:`InputError` for an unsupported object or two inputs of one name.
    """
    from .readers import expand_inputs, input_names
    if isinstance(images, Mapping):
        named: list[tuple[str | None, Any]] = [(str(key), value) for key, value in images.items()]
    elif _is_path(images) or isinstance(images, (np.ndarray, Micrograph)) or is_signal(images):
        named = [(None, images)]
    elif isinstance(images, Iterable):
        named = [(None, value) for value in images]
    else:
        raise InputError(f"images: expected paths, arrays, Micrographs or HyperSpy signals, "
                         f"got a {type(images).__name__}")
    if any(name is not None and _is_path(value) for name, value in named):
        raise InputError("images: a mapping names in-memory images; give files as a list of paths")
    items: list[Input | list[Path]] = []
    for index, (name, value) in enumerate(named):
        if _is_path(value):
            if items and isinstance(items[-1], list):
                items[-1].append(Path(value))
            else:
                items.append([Path(value)])
        else:
            items.append(_in_memory(value, name or _default_name(value, index)))
    # folders are listed once, in place; file names are made unique over all files together
    expanded: list[Input | Path] = []
    for item in items:
        expanded += expand_inputs(item, recursive=recursive) if isinstance(item, list) else [item]
    paths = [item for item in expanded if isinstance(item, Path)]
    file_names = iter(input_names(paths))
    inputs = [Input(next(file_names), path=item) if isinstance(item, Path) else item for item in expanded]
    _check_unique(inputs)
    return inputs


def _check_unique(inputs: Sequence[Input]) -> None:
    seen: dict[str, Input] = {}
    for item in inputs:
        other = seen.get(item.name)
        if other is not None and (item.path is None or other.path is None):
            raise InputError(f"two inputs are both named {item.name!r} ({other.label}, {item.label}); the name "
                             f"keys the particle table and masks: name in-memory images with a mapping "
                             f"{{name: image}} or Micrograph(name=...)")
        seen[item.name] = item


def describe(inputs: Sequence[Input]) -> str:
    """``'3 files'``, ``'2 files and 1 numpy array'``: for messages."""
    counts: dict[str, int] = {}
    for item in inputs:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    parts = [f"{n} {kind}{'s' if n != 1 and not kind.endswith('s') else ''}" for kind, n in counts.items()]
    return " and ".join(parts) if parts else "no inputs"
