"""A run directory: exclusive lock, cached stages, provenance.

Every output is written atomically (:mod:`emcopilot.core.files`), so a killed run
never leaves a half-written CSV, TIFF or JSON. A stage's outputs live in ``stages/<stage>/`` next to a
``key.json`` holding the hash of the stage's inputs and settings; a re-run
whose key matches reuses them (resume), anything else recomputes.
"""
from __future__ import annotations

import fcntl
import os
import platform
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..core.errors import EmcopilotError
from ..core.files import digest, read_json, write_json


class RunLockedError(EmcopilotError):
    """Another emcopilot process is using the same output directory."""


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
    """``segment`` does not write into the folder of an ``emcopilot run`` or ``extract`` (their stages)."""
    if (Path(out) / "stages").is_dir():
        raise EmcopilotError(f"--out {out} holds an emcopilot run or extract (stages/); {command} would mix its "
                             f"outputs with theirs: choose another folder")


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
    :func:`emcopilot.specimen.pixel_size.image_record`), ``errors`` (``input``, ``error``: the rows of
    ``errors.csv``), ``seeds``, ``timings_s`` (``total`` and the parts) and ``environment``. What
    only one command has follows in ``sections`` (documented in the README).
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    from .. import __version__
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
