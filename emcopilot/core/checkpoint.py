"""Safe checkpoints: torch weights as safetensors plus a JSON config.

A checkpoint is a directory::

    config.json           {"format": "emcopilot-checkpoint", "format_version": 1,
                           "architecture": {...}, "weights": {name: {file, sha256}}, ...}
    <name>.safetensors    one file per network (e.g. "model", or "generator" and
                          "discriminator")

Nothing is ever unpickled: ``.pt``/``.pth``/``.ckpt``/``.pkl``/``.bin`` files are
refused with a :class:`~emcopilot.core.errors.CheckpointError`, and so is a
``.safetensors`` file whose bytes are a pickle or a torch zip archive. Loading
compares the stored ``architecture`` with the one the caller is about to build
and names every key that differs, then compares tensor names and shapes with
the module before calling ``load_state_dict``.

torch is imported inside the functions, so importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import CheckpointError

FORMAT = "emcopilot-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_SUFFIX = ".safetensors"
#: Suffixes of pickle-based files (torch.save, pickle, joblib): never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".joblib", ".tar")
#: safetensors limits its JSON header to 100 MB; anything larger is not a safetensors file.
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def _is_state_dict(weights: Mapping) -> bool:
    import torch
    return all(isinstance(value, torch.Tensor) for value in weights.values())


def _as_state_dicts(weights: Any) -> dict[str, dict[str, Any]]:
    """``Module | state dict | {name: Module | state dict}`` -> ``{name: state dict}``."""
    import torch
    if isinstance(weights, torch.nn.Module):
        return {"model": weights.state_dict()}
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"cannot save {type(weights).__name__}: pass a torch module, a state dict "
                              "or a mapping of names to modules/state dicts")
    if weights and _is_state_dict(weights):
        return {"model": dict(weights)}
    state_dicts = {}
    for name, value in weights.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise CheckpointError(f"network name {name!r} must be letters, digits, '-' or '_' (it becomes a file name)")
        if isinstance(value, torch.nn.Module):
            value = value.state_dict()
        if not isinstance(value, Mapping) or not _is_state_dict(value):
            raise CheckpointError(f"network {name!r}: expected a torch module or a state dict of tensors, "
                                  f"got {type(value).__name__}")
        state_dicts[name] = dict(value)
    return state_dicts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(directory: str | os.PathLike, weights: Any, config: Mapping[str, Any]) -> Path:
    """Write ``weights`` as safetensors and ``config`` as ``config.json`` into ``directory``.

    ``weights``: a torch module, a state dict, or ``{name: module | state dict}``
    (one ``<name>.safetensors`` each; a single network is stored as ``model``).
    ``config`` must be JSON-serialisable and should hold an ``architecture``
    mapping: everything needed to rebuild the network before loading it.
    Returns the directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    state_dicts = _as_state_dicts(weights)
    config = dict(config)
    if not isinstance(config.get("architecture", {}), Mapping):
        raise CheckpointError("config['architecture'] must be a mapping of the settings that shape the network")
    try:  # check before writing anything
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"config is not JSON-serialisable: {error}") from None
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, state_dict in state_dicts.items():
        path = directory / f"{name}{WEIGHTS_SUFFIX}"
        # safetensors refuses shared or strided storage: store independent contiguous copies
        tensors = {key: tensor.detach().to("cpu").contiguous().clone() for key, tensor in state_dict.items()}
        save_file(tensors, str(path), metadata={"format": FORMAT})
        files[name] = {"file": path.name, "sha256": _sha256(path), "tensors": len(tensors)}
    document = {"format": FORMAT, "format_version": FORMAT_VERSION}
    document.update(config)  # the reserved keys below are always the checkpoint's own
    document.update(format=FORMAT, format_version=FORMAT_VERSION,
                    architecture=dict(config.get("architecture", {})), weights=files)
    (directory / CONFIG_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory (checked, no weights read)."""
    directory = Path(directory)
    _refuse_pickle(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory (expected a folder with "
                              f"{CONFIG_NAME} and *{WEIGHTS_SUFFIX})")
    path = directory / CONFIG_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        hint = (f"; it holds pickle files ({', '.join(pickles)}), which are refused because loading them "
                "can run arbitrary code — re-save the weights with safetensors") if pickles else ""
        raise CheckpointError(f"{directory}: no {CONFIG_NAME}{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON config: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an emcopilot checkpoint config (\"format\" is "
                              f"{config.get('format') if isinstance(config, dict) else None!r}, expected {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config.get('format_version')!r} is not supported "
                              f"(this emcopilot reads version {FORMAT_VERSION})")
    if not isinstance(config.get("weights"), dict) or not config["weights"]:
        raise CheckpointError(f"{path}: lists no weight files under \"weights\"")
    return config


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path}: {path.suffix} files are pickles and are refused (loading a pickle can run "
                              "arbitrary code); save the weights with emcopilot.core.checkpoint.save_checkpoint "
                              "(safetensors + config.json) and pass that folder")


def _check_safetensors_bytes(path: Path) -> None:
    """Refuse a file that is not safetensors (e.g. a renamed torch.save pickle or zip)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= _MAX_HEADER_BYTES and head[8:9] == b"{":
        return  # safetensors layout; its header length may well start with 0x80 or "PK"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        kind = "a torch zip archive" if head[:2] == b"PK" else "a pickle"
        raise CheckpointError(f"{path}: is {kind}, not safetensors; pickles are refused (loading one can run "
                              "arbitrary code)")
    raise CheckpointError(f"{path}: not a safetensors file (bad header)")


def architecture_mismatch(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable differences ``key: stored X, expected Y`` between two architectures."""
    problems = []
    for key in sorted(set(stored) | set(expected)):
        if key not in expected:
            problems.append(f"{key}: stored {stored[key]!r}, not expected")
        elif key not in stored:
            problems.append(f"{key}: missing, expected {expected[key]!r}")
        elif _normalise(stored[key]) != _normalise(expected[key]):
            problems.append(f"{key}: stored {stored[key]!r}, expected {expected[key]!r}")
    return problems


def _normalise(value: Any) -> Any:
    """Make tuples and lists compare equal (JSON turns tuples into lists)."""
    return json.loads(json.dumps(value, default=str))


def load_checkpoint(directory: str | os.PathLike, *, expected_architecture: Mapping[str, Any] | None = None,
                    device: str = "cpu") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a checkpoint: ``(config, {name: state dict})``.

    With ``expected_architecture``, every differing key is named in the
    :class:`CheckpointError`. Weight files are checked against the SHA-256
    recorded in the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    if expected_architecture is not None:
        stored = config.get("architecture", {})
        if not isinstance(stored, Mapping):
            raise CheckpointError(f"{directory / CONFIG_NAME}: architecture must be a mapping of the network's "
                                  f"settings, got {type(stored).__name__} {stored!r}")
        problems = architecture_mismatch(stored, expected_architecture)
        if problems:
            raise CheckpointError(f"{directory}: checkpoint architecture does not match: " + "; ".join(problems))
    state_dicts = {}
    for name, entry in config["weights"].items():
        file_name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file_name, str) or Path(file_name).name != file_name:
            raise CheckpointError(f"{directory / CONFIG_NAME}: weights[{name!r}] must name a file in the folder, "
                                  f"got {file_name!r}")
        path = directory / file_name
        _refuse_pickle(path)
        if path.suffix != WEIGHTS_SUFFIX:
            raise CheckpointError(f"{path}: weights must be {WEIGHTS_SUFFIX} files")
        if not path.is_file():
            raise CheckpointError(f"{path}: weight file of network {name!r} is missing")
        _check_safetensors_bytes(path)
        if entry.get("sha256") and _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: SHA-256 differs from the one in {CONFIG_NAME}; the file was "
                                  "changed or replaced after saving")
        try:
            state_dicts[name] = load_file(str(path), device=device)
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot read safetensors: {error}") from None
    return config, state_dicts


def restore_module(module: Any, state_dict: Mapping[str, Any], label: str = "checkpoint") -> None:
    """``module.load_state_dict(state_dict)`` after naming missing, unexpected and mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [f"{key} stored {tuple(state_dict[key].shape)} vs model {tuple(own[key].shape)}"
              for key in sorted(set(own) & set(state_dict)) if tuple(own[key].shape) != tuple(state_dict[key].shape)]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:5])}{' ...' if len(shapes) > 5 else ''}")
    if problems:
        raise CheckpointError(f"{label}: weights do not fit the network ({type(module).__name__}): "
                              + " | ".join(problems))
    module.load_state_dict(dict(state_dict), strict=True)
