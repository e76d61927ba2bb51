"""A run directory: exclusive lock, atomic writes, cached stages, provenance.

Every output is written to a temporary file in the same folder and moved into
place with ``os.replace``, so a killed run never leaves a half-written CSV,
TIFF or JSON. A stage's outputs live in ``stages/<stage>/`` next to a
``key.json`` holding the hash of the stage's inputs and settings; a re-run
whose key matches reuses them (resume), anything else recomputes.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .errors import EmcopilotError
from .interfaces import text_safe


class RunLockedError(EmcopilotError):
    """Another emcopilot process is using the same output directory."""


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


def remove_stale_outputs(out: Path, masks: Iterable[str], parts: Iterable[str] = ()) -> list[str]:
    """Delete the masks and table parts in ``out`` that the command just finished did not write.

    ``segment`` and ``extract`` run again into the same ``--out`` with other
    inputs would otherwise leave the earlier images' masks beside the new table.
    Called after the new outputs are in place, so nothing is lost if the command
    fails first. Returns the names removed.
    """
    removed = []
    for folder, keep in (("masks", set(masks)), ("parts", set(parts))):
        directory = Path(out) / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            if path.is_file() and path.name not in keep and not path.name.startswith("."):
                path.unlink()
                removed.append(f"{folder}/{path.name}")
    return removed


def refuse_run_folder(out: Path, command: str) -> None:
    """``segment`` and ``extract`` do not write into the folder of an ``emcopilot run``."""
    if (Path(out) / "stages").is_dir():
        raise EmcopilotError(f"--out {out} holds an emcopilot run (stages/); {command} would mix its outputs "
                             f"with the run's: choose another folder")


class RunDirectory:
    """The ``--out`` folder of one run, held under an exclusive lock."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock_handle = None

    def __enter__(self) -> "RunDirectory":
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(f"{self.root} is in use by {holder}; wait for it to finish or choose "
                                 "another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}")
        handle.flush()
        self._lock_handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def stage_dir(self, stage: str) -> Path:
        return self.root / "stages" / stage

    def cached(self, stage: str, key: str) -> bool:
        """True when ``stage`` completed earlier with the same key."""
        marker = self.stage_dir(stage) / "key.json"
        try:
            return read_json(marker).get("key") == key
        except (OSError, ValueError):
            return False

    def run_stage(self, stage: str, key: str, compute: Callable[[Path], Any],
                  force: bool = False) -> tuple[Path, bool]:
        """Run ``compute(directory)`` unless cached; returns ``(directory, reused)``.

        The stage directory is cleared before computing and the key is written
        last, so an interrupted stage is recomputed on the next run; its new
        generation then changes the :meth:`output_key` every later stage
        depends on, so they are recomputed too.
        """
        directory = self.stage_dir(stage)
        if not force and self.cached(stage, key):
            return directory, True
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        compute(directory)
        # a new generation each time the stage is computed: later stages key on it (output_key), so a
        # stage recomputed after an interrupted --force never pairs with outputs made from its old self
        write_json(directory / "key.json", {"stage": stage, "key": key, "generation": uuid.uuid4().hex})
        return directory, False

    def output_key(self, stage: str) -> str:
        """What a later stage's key holds of a completed ``stage``: its key and the generation of its outputs."""
        marker = read_json(self.stage_dir(stage) / "key.json")
        return digest({"key": marker.get("key"), "generation": marker.get("generation")})

    def invalidate_from(self, stages: list[str], first: str) -> None:
        """Forget ``first`` and every later stage (``--force STAGE``)."""
        for stage in stages[stages.index(first):]:
            marker = self.stage_dir(stage) / "key.json"
            if marker.exists():
                marker.unlink()


#: ``run.json["schema"]``: every command writes the same top-level fields (:func:`write_run_json`).
RUN_JSON_SCHEMA = "emcopilot.run/1"
#: ... the fields every command writes, in this order, before its own (docs/run-folder.md).
RUN_JSON_FIELDS = ("schema", "emcopilot", "command", "recipe", "plugins", "inputs", "images", "errors", "seeds",
                   "timings_s", "environment")
COMMANDS = ("run", "extract", "segment")


def write_run_json(folder: Path, command: str, *, recipe: Mapping[str, Any] | None,
                   plugins: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]],
                   images: Mapping[str, Mapping[str, Any]], errors: Sequence[tuple[str, str]],
                   timings_s: Mapping[str, float], seeds: Mapping[str, int] | None = None,
                   **sections: Any) -> dict[str, Any]:
    """Write ``folder/run.json`` in the one schema of every command, and return it.

    The fields every command writes: ``schema``, ``emcopilot`` (version), ``command``, ``recipe``
    (the resolved recipe; for ``segment`` the one the model was trained with, if it recorded it),
    ``plugins`` (slot -> name, distribution, version of what ran), ``inputs`` (one record per input,
    with its SHA-256), ``images`` (one entry per micrograph measured:
    :func:`emcopilot.pixel_size.image_record`), ``errors`` (``input``, ``error``: the rows of
    ``errors.csv``), ``seeds``, ``timings_s`` (``total`` and the parts) and ``environment``. What
    only one command has follows in ``sections`` (documented in the README).
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    from . import __version__
    info = {"schema": RUN_JSON_SCHEMA, "emcopilot": __version__, "command": command,
            "recipe": dict(recipe) if recipe is not None else None, "plugins": dict(plugins),
            "inputs": list(inputs), "images": dict(images),
            "errors": [{"input": name, "error": message} for name, message in errors],
            "seeds": dict(seeds or {}), "timings_s": dict(timings_s), "environment": environment(),
            **sections}
    assert tuple(info)[:len(RUN_JSON_FIELDS)] == RUN_JSON_FIELDS, "a command section shadows a common field"
    write_json(Path(folder) / "run.json", info)
    return info


def environment() -> dict[str, Any]:
    """Versions and device, for ``run.json``."""
    from importlib import metadata
    versions = {}
    for package in ("emcopilot", "numpy", "scipy", "scikit-image", "torch", "torchvision",
                    "segment-anything", "rosettasciio", "pluggy", "pyyaml", "pandas", "dask"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = "cpu"
    if "torch" in sys.modules:
        import torch
        if torch.cuda.is_available():
            device = f"cuda ({torch.cuda.get_device_name(0)})"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.node(),
            "cpu_count": os.cpu_count(), "device": device, "packages": versions}
