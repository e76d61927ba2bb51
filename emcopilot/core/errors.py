"""Exceptions that carry what a user needs to fix the problem."""
from __future__ import annotations

import difflib
from typing import Iterable


class EmcopilotError(Exception):
    """Base class of every error emcopilot raises on purpose."""


class PluginError(EmcopilotError):
    """A plugin is unknown, duplicated, broken or misbehaving."""


class RecipeError(EmcopilotError):
    """A recipe cannot be loaded or does not validate.

    ``file``, ``line`` and ``key`` locate the problem (any may be ``None``).
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 key: str | None = None):
        self.file, self.line, self.key, self.reason = file, line, key, message
        where = file or "<recipe>"
        if line is not None:
            where += f":{line}"
        if key:
            where += f": {key}"
        super().__init__(f"{where}: {message}")


class ReadError(EmcopilotError):
    """A micrograph file cannot be read; the message names the file and reader."""


class CheckpointError(EmcopilotError):
    """A checkpoint is unsafe (pickle) or does not match the architecture."""


class InputError(EmcopilotError, ValueError):
    """Array or parameter values that a component cannot work with."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
