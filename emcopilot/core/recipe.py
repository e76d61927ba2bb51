"""YAML recipes: loading, ``base:`` inheritance and validation.

A recipe describes a material system and names the plugin in each slot::

    name: nanoparticles-haadf
    description: Supported metal nanoparticles, HAADF-STEM
    base: common-haadf            # optional: a recipe name or a relative path
    sample: {material: Pt, modality: haadf-stem, working_pixel_size_nm: 0.1, ...}
    prior_extractor: {plugin: classical, params: {...}}
    generator: {plugin: pix2pix, params: {...}}
    physics_adapter: {plugin: haadf-stem, params: {...}}
    segmenter: {plugin: unet, params: {...}}
    metrics: [{plugin: detection}, {plugin: size-distribution}]
    train: {seed: 0, rounds: 1, profiles: {fast: {...}, full: {...}}}

Files are parsed with the safe loader only (no Python tags), size-limited, and
aliases may not expand beyond a fixed node budget (:mod:`emcopilot.core.safe_yaml`). Every error names the file,
the line and the key. Validation checks each slot's ``params`` against the
plugin's declared schema without importing the plugin's heavy code.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import RecipeError, did_you_mean, PluginError
from .params import Param, ParamsProblem, validate_params
from .plugins import BrokenPlugin, Registry, get_registry
from .safe_yaml import MAX_EXPANDED_NODES, MAX_RECIPE_BYTES, YamlDocument, parse_yaml, read_limited_text  # noqa: F401

log = logging.getLogger(__name__)

MAX_BASE_DEPTH = 16

COMPONENT_SLOTS = ("prior_extractor", "generator", "physics_adapter", "segmenter")
TOP_LEVEL_KEYS = ("name", "description", "base", "sample", *COMPONENT_SLOTS, "metrics", "train")

#: The ``sample:`` block: the material system in physical units.
SAMPLE_SCHEMA: dict[str, Param] = {
    "material": Param("", str, help="metal or phase of the objects, e.g. Pt, PtCo"),
    "support": Param("", str, help="support material, e.g. carbon, silica, alumina"),
    "modality": Param("haadf-stem", str, help="imaging mode, e.g. haadf-stem, bf-stem"),
    "kind": Param("particles", str, choices=("particles", "clusters", "atoms"),
                  help="what the objects are: nanoparticles, sub-nm clusters or single atoms"),
    "material_z": Param(78, int, min=1, max=103, help="atomic number of the objects"),
    "support_z": Param(6, int, min=1, max=103, help="(mean) atomic number of the support"),
    "diameter_nm": Param([1.0, 10.0], list, items=float, unit="nm",
                         help="expected range of object diameters [min, max]"),
    "working_pixel_size_nm": Param(0.1, float, min=0.001, max=5.0, unit="nm/px",
                                   help="working pixel size: every micrograph is resampled to it and the models "
                                        "run at this scale (not the pixel size of your images)"),
    "magnification": Param(None, float, min=1e3, max=1e8, help="nominal magnification (informative)"),
    "dose_e_per_A2": Param([1e3, 1e5], list, items=float, unit="e/Å²",
                           help="range of electron doses per frame [min, max]"),
    "accelerating_voltage_kV": Param(200.0, float, min=1.0, max=1000.0, unit="kV"),
    "particle_contrast": Param(None, str, choices=("bright", "dark"),
                               help="objects brighter or darker than the support; default from modality"),
}

#: One ``train.profiles.<profile>`` block: budgets of the loop.
PROFILE_SCHEMA: dict[str, Param] = {
    "synthetic_images": Param(64, int, min=1, max=1_000_000, help="synthetic micrographs per round"),
    "image_px": Param(256, int, min=32, max=8192, unit="px", help="side of synthetic micrographs"),
    "generator_steps": Param(300, int, min=0, max=10_000_000),
    "segmenter_steps": Param(300, int, min=0, max=10_000_000),
    "batch_size": Param(8, int, min=1, max=4096),
    "crop_px": Param(128, int, min=16, max=4096, unit="px"),
    "max_minutes": Param(None, float, min=0.1, help="wall-time budget of the training stages"),
}

TRAIN_SCHEMA: dict[str, Param] = {
    "seed": Param(0, int, min=0, max=2**32 - 1),
    "rounds": Param(1, int, min=1, max=10),
    "profile": Param("fast", str, help="profile used unless the command line says otherwise"),
    "profiles": Param({}, dict),
}


# --------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class RecipeSource:
    """A recipe file known by name: where it is and which plugin shipped it."""

    name: str
    description: str
    location: Path | Traversable
    label: str
    origin: str


def _iter_yaml(location: Any) -> Iterator[Any]:
    if location.is_file():
        yield location
        return
    for child in sorted(location.iterdir(), key=lambda c: c.name):
        if child.name.endswith((".yaml", ".yml")) and child.is_file():
            yield child


def recipe_index(registry: Registry | None = None) -> dict[str, RecipeSource]:
    """Named recipes registered by plugins (``register_recipes``).

    A shipped recipe that cannot be read, has no name, or takes a name already
    shipped (a built-in keeps its name) is left out and its plugin is listed
    among the broken plugins with the reason; every other recipe stays usable.
    """
    registry = registry or get_registry()
    index: dict[str, RecipeSource] = {}

    def problem(origin, message: str) -> None:
        entry = BrokenPlugin(origin, message)
        if entry not in registry.broken:  # the index is built more than once per process
            registry.broken.append(entry)
            log.warning("%s: %s", origin, message)

    builtin_first = sorted(registry.recipe_sources, key=lambda source: source[1].distribution != "emcopilot")
    for location, origin in builtin_first:
        try:
            items = list(_iter_yaml(location))
        except (OSError, RecipeError) as error:
            problem(origin, f"its recipe folder {location} cannot be listed: {error}")
            continue
        for item in items:
            label = str(item)
            try:
                doc = parse_yaml(read_limited_text(item, label), label)
                name = doc.data.get("name")
                if not isinstance(name, str) or not name:
                    raise RecipeError("a shipped recipe needs a 'name:'", file=label, line=1, key="name")
            except RecipeError as error:
                problem(origin, f"recipe left out: {error}")
                continue
            if name in index:
                problem(origin, f"recipe {name!r} ({label}) left out: the name is shipped already by "
                                f"{index[name].origin} ({index[name].label})")
                continue
            index[name] = RecipeSource(name, str(doc.data.get("description", "")).strip(), item, label, str(origin))
    return index


# --------------------------------------------------------------------------- the recipe

@dataclass(frozen=True)
class Sample:
    """The validated ``sample:`` block (physical units)."""

    material: str
    support: str
    modality: str
    kind: str
    material_z: int
    support_z: int
    diameter_nm: tuple[float, float]
    working_pixel_size_nm: float
    magnification: float | None
    dose_e_per_A2: tuple[float, float]
    accelerating_voltage_kV: float
    particle_contrast: str

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "sample") -> "Sample":
        """The validated sample; the old key ``pixel_size_nm`` is read as ``working_pixel_size_nm``
        with a deprecation warning that names ``where``."""
        resolved = validate_params(SAMPLE_SCHEMA, upgrade_sample_keys(values, where), owner="sample")
        resolved = dict(resolved, diameter_nm=tuple(resolved["diameter_nm"]),
                        dose_e_per_A2=tuple(resolved["dose_e_per_A2"]))
        if resolved["particle_contrast"] is None:
            resolved["particle_contrast"] = "dark" if resolved["modality"].lower().startswith("bf") else "bright"
        return cls(**resolved)

    def as_dict(self) -> dict[str, Any]:
        return {name: (list(value) if isinstance(value, tuple) else value)
                for name, value in self.__dict__.items()}

    @property
    def pixel_size_nm(self) -> float:
        """Deprecated name of :attr:`working_pixel_size_nm`."""
        warnings.warn("Sample.pixel_size_nm is deprecated: use Sample.working_pixel_size_nm (the scale the "
                      "models run at, not the pixel size of the images)", DeprecationWarning, stacklevel=2)
        return self.working_pixel_size_nm


#: sample keys of earlier versions -> their names now
LEGACY_SAMPLE_KEYS = {"pixel_size_nm": "working_pixel_size_nm"}


def upgrade_sample_keys(values: Mapping[str, Any], where: str = "sample") -> Mapping[str, Any]:
    """``values`` with old sample keys renamed (a :class:`DeprecationWarning` and a log warning name
    ``where``, e.g. ``recipe.yaml:11``); both names at once is a :class:`ParamsProblem`."""
    if not isinstance(values, Mapping) or not any(old in values for old in LEGACY_SAMPLE_KEYS):
        return values
    upgraded = dict(values)
    for old, new in LEGACY_SAMPLE_KEYS.items():
        if old not in upgraded:
            continue
        if new in upgraded:
            raise ParamsProblem(old, f"give '{new}' only: '{old}' is its old name")
        message = (f"{where}: 'sample.{old}' is deprecated, write 'sample.{new}' (the scale the models run at; "
                   f"the pixel size of your images comes from their files, --pixel-size-nm or --calibration)")
        warnings.warn(message, DeprecationWarning, stacklevel=3)
        log.warning("%s", message)
        upgraded[new] = upgraded.pop(old)
    return upgraded


@dataclass(frozen=True)
class SlotChoice:
    """The plugin named in one slot, with its validated parameters."""

    slot: str
    plugin: str
    params: dict[str, Any]

    def create(self, sample: Sample | None = None, registry: Registry | None = None) -> Any:
        return (registry or get_registry()).get(self.slot, self.plugin).create(self.params, sample)


@dataclass(frozen=True)
class Recipe:
    """A fully resolved and validated recipe."""

    name: str
    description: str
    source: str
    chain: tuple[str, ...]
    sample: Sample
    prior_extractor: SlotChoice
    generator: SlotChoice
    physics_adapter: SlotChoice
    segmenter: SlotChoice
    metrics: tuple[SlotChoice, ...]
    train: dict[str, Any]
    profiles: dict[str, dict[str, Any]] = field(repr=False)

    def profile(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.train["profile"]
        if name not in self.profiles:
            raise RecipeError(f"no training profile {name!r}.{did_you_mean(name, self.profiles)} "
                              f"Profiles: {', '.join(self.profiles) or 'none'}", file=self.source, key="train.profiles")
        return self.profiles[name]

    def as_dict(self) -> dict[str, Any]:
        """The resolved recipe, as recorded in ``run.json``."""
        slot = lambda choice: {"plugin": choice.plugin, "params": choice.params}  # noqa: E731
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "chain": list(self.chain), "sample": self.sample.as_dict(),
            **{name: slot(getattr(self, name)) for name in COMPONENT_SLOTS},
            "metrics": [slot(choice) for choice in self.metrics],
            "train": dict(self.train, profiles=self.profiles),
        }


# --------------------------------------------------------------------------- loading

@dataclass
class _Layered:
    """Merged data with, for every key path, the file and line that set it."""

    data: dict[str, Any]
    where: dict[tuple, tuple[str, int]]
    chain: list[str]

    def locate(self, *path: Any) -> tuple[str, int | None]:
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.where:
                return self.where[path[:cut]]
        return self.chain[-1], None

    def error(self, message: str, *path: Any) -> RecipeError:
        file, line = self.locate(*path)
        return RecipeError(message, file=file, line=line, key=".".join(map(str, path)) or None)


def _merge(base: _Layered, child: YamlDocument) -> _Layered:
    data = copy.deepcopy(base.data)
    where = dict(base.where)
    for key, value in child.data.items():
        if key == "base":
            continue
        replace = not (isinstance(value, dict) and isinstance(data.get(key), dict))
        if key in COMPONENT_SLOTS and isinstance(value, dict) and isinstance(data.get(key), dict):
            # a different plugin brings a different schema: do not inherit params
            replace = "plugin" in value and value["plugin"] != data[key].get("plugin")
        if replace:
            data[key] = copy.deepcopy(value)
            where = {p: w for p, w in where.items() if p[:1] != (key,)}
        else:
            data[key] = _deep_update(data[key], value)
        for path, line in child.lines.items():
            if path[:1] == (key,):
                where[path] = (child.file, line)
    return _Layered(data, where, base.chain + [child.file])


def _deep_update(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve_base(base: Any, doc: YamlDocument, directory: Path | None, index: Mapping[str, RecipeSource]):
    if not isinstance(base, str) or not base.strip():
        raise RecipeError(f"'base' must be a recipe name or a relative path, got {base!r}",
                          file=doc.file, line=doc.lines.get(("base",)), key="base")
    looks_like_path = base.endswith((".yaml", ".yml")) or "/" in base or os.sep in base
    if not looks_like_path:
        if base in index:
            return index[base].location, index[base].label
        raise RecipeError(f"no recipe named {base!r}.{did_you_mean(base, index)} Known recipes: "
                          f"{', '.join(sorted(index)) or 'none'}", file=doc.file, line=doc.lines.get(("base",)), key="base")
    if directory is None:
        raise RecipeError(f"a shipped recipe must name its base by recipe name, not path {base!r}",
                          file=doc.file, line=doc.lines.get(("base",)), key="base")
    candidate = (directory / base).resolve()
    if Path(base).is_absolute() or not candidate.is_relative_to(directory.resolve()):
        raise RecipeError(f"base path {base!r} leaves the recipe's folder {directory}; "
                          "use a path inside it or a recipe name", file=doc.file, line=doc.lines.get(("base",)), key="base")
    if not candidate.exists():
        raise RecipeError(f"base recipe file {base!r} does not exist (looked for {candidate})",
                          file=doc.file, line=doc.lines.get(("base",)), key="base")
    return candidate, str(candidate)


def _load_layers(location: Path | Traversable, label: str, index: Mapping[str, RecipeSource],
                 visiting: tuple[str, ...] = ()) -> _Layered:
    identity = str(Path(label).resolve()) if isinstance(location, Path) else label
    if identity in visiting:
        cycle = " -> ".join(list(visiting) + [identity])
        raise RecipeError(f"'base' inheritance forms a cycle: {cycle}", file=label, key="base")
    if len(visiting) >= MAX_BASE_DEPTH:
        raise RecipeError(f"'base' chain is deeper than {MAX_BASE_DEPTH} recipes", file=label, key="base")
    doc = parse_yaml(read_limited_text(location, label), label)
    if "base" not in doc.data:
        empty = _Layered({}, {}, [])
        return _merge(empty, doc)
    directory = location.parent if isinstance(location, Path) else None
    base_location, base_label = _resolve_base(doc.data["base"], doc, directory, index)
    base = _load_layers(base_location, base_label, index, visiting + (identity,))
    return _merge(base, doc)


def load_recipe(reference: str | os.PathLike, registry: Registry | None = None) -> Recipe:
    """Load and validate a recipe given by built-in name or by path.

    Raises :class:`RecipeError` (file, line, key) on the first problem found.
    Only the plugins' declared parameter schemas are consulted: nothing heavy
    is imported.
    """
    registry = registry or get_registry()
    index = recipe_index(registry)
    reference = os.fspath(reference)
    path = Path(reference)
    if reference in index and not path.exists():
        layered = _load_layers(index[reference].location, index[reference].label, index)
    elif path.exists() or reference.endswith((".yaml", ".yml")) or os.sep in reference:
        if not path.exists():
            raise RecipeError("no such recipe file", file=reference)
        layered = _load_layers(path, str(path), index)
    else:
        raise RecipeError(f"no recipe named {reference!r} and no such file.{did_you_mean(reference, index)} "
                          f"Built-in and plugin recipes: {', '.join(sorted(index)) or 'none'}", file=reference)
    return _validate(layered, registry)


def _validate(layered: _Layered, registry: Registry) -> Recipe:
    data = layered.data
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise layered.error(f"unknown key.{did_you_mean(key, TOP_LEVEL_KEYS)} "
                                f"Recipe keys: {', '.join(TOP_LEVEL_KEYS)}", key)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise layered.error("every recipe needs a 'name:' (a non-empty string)", "name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise layered.error("must be a string", "description")
    sample_block = data.get("sample")
    if not isinstance(sample_block, dict):
        raise layered.error("a 'sample:' mapping is required (material, modality, working_pixel_size_nm, ...)", "sample")
    try:
        file, line = layered.locate("sample", "pixel_size_nm")
        sample = Sample.from_dict(sample_block, where=f"{file}:{line}" if line else file)
    except ParamsProblem as problem:
        raise layered.error(problem.reason, "sample", problem.key) from None
    for key in ("diameter_nm", "dose_e_per_A2"):
        low_high = getattr(sample, key)
        if len(low_high) != 2 or not (0 < low_high[0] <= low_high[1]):
            raise layered.error(f"must be [min, max] with 0 < min <= max, got {list(low_high)}", "sample", key)
    choices = {slot: _slot_choice(layered, registry, slot, data.get(slot), (slot,)) for slot in COMPONENT_SLOTS}
    metrics_block = data.get("metrics", [])
    if not isinstance(metrics_block, list):
        raise layered.error("must be a list of {plugin: NAME, params: {...}}", "metrics")
    metrics = tuple(_slot_choice(layered, registry, "metric", block, ("metrics", index))
                    for index, block in enumerate(metrics_block))
    train, profiles = _train(layered, data.get("train", {}))
    return Recipe(name=name.strip(), description=description.strip(), source=layered.chain[-1],
                  chain=tuple(layered.chain), sample=sample, metrics=metrics, train=train,
                  profiles=profiles, **choices)


def _slot_choice(layered: _Layered, registry: Registry, slot: str, block: Any, path: tuple) -> SlotChoice:
    if block is None:
        raise layered.error(f"the recipe must name a {slot} plugin: '{path[0]}: {{plugin: NAME}}'", *path)
    if not isinstance(block, dict):
        raise layered.error("must be a mapping with 'plugin:' and optional 'params:'", *path)
    for key in block:
        if key not in ("plugin", "params"):
            raise layered.error(f"unknown key.{did_you_mean(key, ('plugin', 'params'))} "
                                "A slot block has 'plugin' and 'params'", *path, key)
    plugin = block.get("plugin")
    if not isinstance(plugin, str):
        raise layered.error("'plugin:' must name a registered plugin", *path, "plugin")
    try:
        component = registry.get(slot, plugin)
    except PluginError as error:
        raise layered.error(str(error), *path, "plugin") from None
    params = block.get("params") or {}
    if not isinstance(params, dict):
        raise layered.error("'params:' must be a mapping", *path, "params")
    try:
        resolved = validate_params(component.params, params, owner=f"{slot} {plugin!r}")
    except ParamsProblem as problem:
        raise layered.error(problem.reason, *path, "params", problem.key) from None
    return SlotChoice(slot, plugin, resolved)


def _train(layered: _Layered, block: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    if not isinstance(block, dict):
        raise layered.error("must be a mapping (seed, rounds, profile, profiles)", "train")
    try:
        train = validate_params(TRAIN_SCHEMA, block, owner="train")
    except ParamsProblem as problem:
        raise layered.error(problem.reason, "train", problem.key) from None
    profiles = {}
    for profile_name, profile in (train["profiles"] or {}).items():
        if not isinstance(profile, dict):
            raise layered.error("a profile must be a mapping of budgets", "train", "profiles", profile_name)
        try:
            profiles[str(profile_name)] = validate_params(PROFILE_SCHEMA, profile, owner=f"profile {profile_name!r}")
        except ParamsProblem as problem:
            raise layered.error(problem.reason, "train", "profiles", profile_name, problem.key) from None
    profiles.setdefault("fast", validate_params(PROFILE_SCHEMA, {}, owner="profile 'fast'"))
    if train["profile"] not in profiles:
        raise layered.error(f"no profile {train['profile']!r} in train.profiles.{did_you_mean(train['profile'], profiles)}",
                            "train", "profile")
    train = {key: value for key, value in train.items() if key != "profiles"}
    return train, profiles
