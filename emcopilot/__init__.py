"""emcopilot: label-free segmentation of electron micrographs.

For notebooks and scripts, the commands as functions (:mod:`emcopilot.pipeline.api`)::

    result = emcopilot.run("nanoparticles-haadf", ["a.dm4", "b.dm4"], out="run1")
    result.table, result.statistics, result.labels, result.plot()

``run``, ``extract``, ``segment``, ``load_run`` and ``Result`` load on first use, so that
importing this package stays cheap (no torch). The API for plugin authors is re-exported here too.
"""
from .core.errors import (CheckpointError, EmcopilotError, InputError, PluginError, ReadError,
                     RecipeError)
from .core.hookspecs import hookimpl
from .core.interfaces import Instances, Micrograph
from .core.params import Param

__version__ = "0.1.0"

_API = ("Result", "extract", "load_run", "run", "segment")

__all__ = [
    "CheckpointError", "EmcopilotError", "InputError", "Instances", "Micrograph", "Param",
    "PluginError", "ReadError", "RecipeError", "__version__", "hookimpl", *_API,
]


def __getattr__(name: str):
    if name in _API:
        from .pipeline import api
        return getattr(api, name)
    raise AttributeError(f"module 'emcopilot' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
