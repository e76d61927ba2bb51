"""The npe2 reader: an emcopilot output folder (one with a ``run.json``) as layers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def get_reader(path: Any) -> Callable | None:
    """A reader for ``path`` if it is an output folder of ``run``, ``extract`` or ``segment``, else ``None``."""
    if isinstance(path, (list, tuple)):
        path = path[0] if len(path) == 1 else None
    if path is None or not (Path(path).is_dir() and (Path(path) / "run.json").is_file()):
        return None
    return read_run


def read_run(path: Any) -> list:
    from ..pipeline.api import load_run
    from .layers import result_layers
    if isinstance(path, (list, tuple)):
        path = path[0]
    return result_layers(load_run(path))
