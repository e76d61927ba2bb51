"""emcopilot: label-free segmentation of electron micrographs.

The public API for plugin authors is re-exported here; importing it is cheap
(no torch).
"""
from .errors import (CheckpointError, EmcopilotError, InputError, PluginError, ReadError,
                     RecipeError)
from .hookspecs import hookimpl
from .interfaces import Instances, Micrograph
from .params import Param

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "EmcopilotError", "InputError", "Instances", "Micrograph", "Param",
    "PluginError", "ReadError", "RecipeError", "__version__", "hookimpl",
]
