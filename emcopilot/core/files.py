"""Files written so that a killed process never leaves half of one: atomic writes, hashes, JSON.

Every output goes to a temporary file in the same folder and is moved into place
with ``os.replace``. The label TIFFs open at scale in Fiji and napari; the
CSV writers keep a spreadsheet from running a cell as a formula. Plugins, the
particle table and the run folder all write through here.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .interfaces import text_safe


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_json_default, separators=(",", ":"))


def digest(value: Any) -> str:
    """SHA-256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            hasher.update(block)
    return hasher.hexdigest()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (0666 less the umask),
        # so that a shared server's group can read the tables, masks, report and model
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def current_umask() -> int:
    """The process umask (read by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile
    with atomic_path(path) as temporary:
        tifffile.imwrite(temporary, array, compression="zlib")


def write_label_tiff(path: Path, labels: np.ndarray, pixel_size_nm: float | None = None) -> None:
    """A label image as Fiji and napari open it at scale (zlib-compressed, atomically).

    Labels are 16-bit when they fit (up to 65535 objects), written as an ImageJ
    TIFF whose resolution tags and description carry the pixel size in nm, so
    Fiji's *Image > Properties* and its measurements are calibrated. More objects
    are written as 32-bit integers (which ImageJ itself cannot hold) with the same
    resolution tags. Without a pixel size the file is uncalibrated (pixels).
    """
    import tifffile

    labels = np.asarray(labels)
    largest = int(labels.max()) if labels.size else 0
    options: dict[str, Any] = {"compression": "zlib"}
    if pixel_size_nm:
        options["resolution"] = (1.0 / float(pixel_size_nm), 1.0 / float(pixel_size_nm))
    if largest <= np.iinfo(np.uint16).max and labels.min(initial=0) >= 0:
        data = labels.astype(np.uint16)
        options["imagej"] = True
        if pixel_size_nm:
            options["metadata"] = {"unit": "nm"}
    else:
        data = labels.astype(np.int32)
        if pixel_size_nm:
            options["resolutionunit"] = "NONE"
    with atomic_path(path) as temporary:
        tifffile.imwrite(temporary, data, **options)


#: first characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(cell: str) -> str:
    """``cell`` with a leading apostrophe if a spreadsheet would read it as a formula."""
    return f"'{cell}" if cell.startswith(FORMULA_PREFIXES) else cell


def write_errors(path: Path, errors: Sequence[tuple[str, str]]) -> None:
    """``errors.csv``: one ``path,error`` row per input that failed (always written, maybe empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "error"])
    writer.writerows([formula_safe(text_safe(str(cell))) for cell in row] for row in errors)
    write_text(path, buffer.getvalue())


def input_sha256s(paths: Iterable[Path]) -> dict[str, str | None]:
    """SHA-256 of each input file for provenance; ``None`` where the file cannot be read."""
    hashes: dict[str, str | None] = {}
    for path in paths:
        try:
            hashes[str(path)] = sha256_file(path)
        except OSError:
            hashes[str(path)] = None
    return hashes


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
