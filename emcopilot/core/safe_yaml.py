"""Untrusted YAML read safely: a size limit, the safe loader, an alias budget, no duplicate keys.

Recipes come from users and from third-party packages, so a file is read only
up to ``MAX_RECIPE_BYTES``, parsed with PyYAML's safe loader (no Python tags),
refused when its aliases would expand beyond ``MAX_EXPANDED_NODES`` nodes (alias
bombs) or when a mapping gives a key twice, and returned with the line of every
key path so that every later error can name the file, the line and the key.
"""
from __future__ import annotations

from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError

MAX_RECIPE_BYTES = 256 * 1024
MAX_EXPANDED_NODES = 20_000


class YamlDocument:
    """Parsed YAML: the data plus the line of every key path."""

    def __init__(self, data: Any, lines: dict[tuple, int], file: str):
        self.data, self.lines, self.file = data, lines, file


def read_limited_text(source: Path | Traversable, label: str) -> str:
    """The UTF-8 text of ``source`` (a file or a packaged resource), refused above MAX_RECIPE_BYTES."""
    try:
        if isinstance(source, Path):
            if source.is_dir():
                raise RecipeError("is a directory, not a recipe file", file=label)
            size = source.stat().st_size
            if size > MAX_RECIPE_BYTES:
                raise RecipeError(f"file is {size} bytes; recipes are limited to {MAX_RECIPE_BYTES}", file=label)
        raw = source.read_bytes()
    except RecipeError:
        raise
    except OSError as error:
        raise RecipeError(f"cannot read the file: {error.strerror or error}", file=label) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"file is {len(raw)} bytes; recipes are limited to {MAX_RECIPE_BYTES}", file=label)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecipeError(f"not UTF-8 text ({error.reason} at byte {error.start})", file=label) from None


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Number of nodes after expanding aliases (memoised: cheap for alias bombs)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # guards against recursive structures
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[key] = min(total, MAX_EXPANDED_NODES + 1)
    return memo[key]


def _record_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[path + (key_node.value,)] = key_node.start_mark.line + 1
                _record_lines(value_node, path + (key_node.value,), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _record_lines(child, path + (index,), lines, seen)


def _refuse_duplicate_keys(node: yaml.Node, label: str, seen: set[int]) -> None:
    """A key given twice in one mapping is an error (YAML loaders keep the last one silently)."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    raise RecipeError(f"key '{key_node.value}' is given twice, on lines {first[key_node.value]} "
                                      f"and {line}: keep one", file=label, line=line)
                first[key_node.value] = line
            _refuse_duplicate_keys(value_node, label, seen)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _refuse_duplicate_keys(child, label, seen)


def parse_yaml(text: str, label: str) -> YamlDocument:
    """Safe-load one YAML document, keeping the line of every key."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader rejects control characters here
        node = loader.get_single_node()
        if node is None:
            raise RecipeError("the file is empty", file=label, line=1)
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise RecipeError(f"the document expands to more than {MAX_EXPANDED_NODES} nodes "
                              "(too many or nested aliases)", file=label, line=node.start_mark.line + 1)
        _refuse_duplicate_keys(node, label, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or str(error)
        if "could not determine a constructor" in problem:
            problem += " (Python and custom tags are not allowed in recipes)"
        raise RecipeError(f"invalid YAML: {problem}", file=label, line=line) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"invalid YAML: {error}", file=label) from None
    except RecursionError:
        raise RecipeError("the document is nested too deeply", file=label) from None
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of keys, got {type(data).__name__}", file=label, line=1)
    lines: dict[tuple, int] = {}
    _record_lines(node, (), lines, set())
    return YamlDocument(data, lines, label)
