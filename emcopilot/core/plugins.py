"""The plugin host: entry-point discovery and the per-slot registry.

Every plugin, built-in or third-party, is a module named by an entry point in
the ``emcopilot`` group. :func:`get_registry` loads them once (lazily), calls
each ``register_<slot>s`` hook with a callback that records what the plugin
registers, and returns a :class:`Registry`. A plugin that fails to import, to
register (a factory that is not callable, a parameter that is not a ``Param``,
a hook that raises), implements a hook no spec declares, or shares its name
with another plugin is kept as a :class:`BrokenPlugin`, with the reason, and
nothing it registered is used; the others still load. A component name that
two plugins register is disabled unless one of them is built in.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

import pluggy

from . import hookspecs
from .errors import PluginError, did_you_mean
from .params import Param, validate_params

#: what a metric plugin may compare (``register(..., compares=...)``)
COMPARES = ("instances", "image pairs", "image sets")

if sys.version_info >= (3, 10):
    from importlib.metadata import entry_points
else:  # pragma: no cover
    from importlib_metadata import entry_points

ENTRY_POINT_GROUP = "emcopilot"

#: slot name -> hook name. Slot names are part of the command-line contract.
SLOTS = {
    "prior_extractor": "register_prior_extractors",
    "generator": "register_generators",
    "physics_adapter": "register_physics_adapters",
    "segmenter": "register_segmenters",
    "metric": "register_metrics",
}


class RegisterComponent(Protocol):
    def __call__(self, name: str, factory: Callable[..., Any], *,
                 params: Mapping[str, Param] | None = None, description: str = "",
                 compares: str | None = None) -> None: ...


class RegisterRecipes(Protocol):
    def __call__(self, path: Any) -> None: ...


@dataclass(frozen=True)
class Origin:
    """Where a plugin comes from: entry-point name, module, distribution, version."""

    plugin: str
    module: str
    distribution: str | None
    version: str | None

    def __str__(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"plugin {self.plugin!r} ({self.module}, {dist})"


@dataclass(frozen=True)
class Component:
    """One registered component of a slot."""

    name: str
    slot: str
    factory: Callable[..., Any] = field(repr=False)
    params: Mapping[str, Param]
    description: str
    origin: Origin
    #: metrics only: what the metric compares (``instances``, ``image pairs`` or ``image sets``)
    compares: str | None = None

    def create(self, params: Mapping[str, Any] | None = None, sample: Any = None) -> Any:
        """Validate ``params`` and call the factory; plugin errors name the plugin."""
        resolved = validate_params(self.params, params, owner=f"{self.slot} {self.name!r}")
        try:
            return self.factory(resolved, sample)
        except Exception as error:
            raise PluginError(f"{self.slot} {self.name!r} from {self.origin} failed to start: "
                              f"{type(error).__name__}: {error}") from error

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "slot": self.slot,
            "description": self.description,
            "plugin": self.origin.plugin,
            "module": self.origin.module,
            "distribution": self.origin.distribution,
            "version": self.origin.version,
            "params": {key: param.describe() for key, param in self.params.items()},
            **({"compares": self.compares} if self.compares else {}),
            "error": None,
        }


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that could not be imported or registered."""

    origin: Origin
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.origin.plugin, "slot": None, "description": "",
                "plugin": self.origin.plugin, "module": self.origin.module,
                "distribution": self.origin.distribution, "version": self.origin.version,
                "params": {}, "error": self.error}


class Registry:
    """Components by slot and name, the recipe sources, and broken plugins."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, Component]] = {slot: {} for slot in SLOTS}
        self.recipe_sources: list[tuple[Any, Origin]] = []
        self.broken: list[BrokenPlugin] = []
        #: (slot, name) -> why the name cannot be used (two plugins registered it)
        self.disabled: dict[tuple[str, str], str] = {}

    def get(self, slot: str, name: str) -> Component:
        if slot not in self.components:
            raise PluginError(f"unknown slot {slot!r}; slots are {', '.join(SLOTS)}.{did_you_mean(slot, SLOTS)}")
        if (slot, name) in self.disabled:
            raise PluginError(self.disabled[slot, name])
        try:
            return self.components[slot][name]
        except KeyError:
            known = ", ".join(sorted(self.components[slot])) or "none"
            hint = did_you_mean(name, self.components[slot])
            broken = "".join(f"\nNote: {b.origin} is broken and could not register: {b.error}"
                             for b in self.broken)
            raise PluginError(f"no {slot} named {name!r}.{hint} Available {slot}s: {known}.{broken}") from None

    def all(self, slot: str | None = None) -> list[Component]:
        slots = [slot] if slot else list(SLOTS)
        return [self.components[s][n] for s in slots for n in sorted(self.components[s])]

    def add(self, component: Component) -> None:
        """Add a component; a name already taken is a problem of the plugins, not of the host.

        When a built-in and a third-party plugin share a name, the built-in keeps it and the other
        plugin is listed as broken; between two third-party plugins, the name is disabled (using it
        is an error naming both) and both are listed.
        """
        key = (component.slot, component.name)
        if key in self.disabled:
            self.broken.append(BrokenPlugin(component.origin, f"{component.slot} {component.name!r}: "
                                                              f"{self.disabled[key]}"))
            return
        existing = self.components[component.slot].get(component.name)
        if existing is None:
            self.components[component.slot][component.name] = component
            return
        clash = (f"{component.slot} {component.name!r} is registered twice: by {existing.origin} and by "
                 f"{component.origin}. Rename one of them or uninstall one of the packages.")
        if _is_builtin(existing.origin) != _is_builtin(component.origin):
            keep, drop = (existing, component) if _is_builtin(existing.origin) else (component, existing)
            self.components[component.slot][component.name] = keep
            self.broken.append(BrokenPlugin(drop.origin, clash + f" The built-in one is used."))
            return
        del self.components[component.slot][component.name]
        self.disabled[key] = clash
        for origin in (existing.origin, component.origin):
            self.broken.append(BrokenPlugin(origin, clash))

    def drop_plugin(self, origin: Origin) -> None:
        """Remove every component and recipe folder that ``origin`` registered (it is broken)."""
        for slot in self.components:
            self.components[slot] = {n: c for n, c in self.components[slot].items() if c.origin != origin}
        self.recipe_sources = [(path, o) for path, o in self.recipe_sources if o != origin]


def _is_builtin(origin: Origin) -> bool:
    return origin.distribution == "emcopilot"


def _distribution_of(entry_point) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _make_register(registry: Registry, slot: str, origin: Origin) -> RegisterComponent:
    def register(name: str, factory: Callable[..., Any], *,
                 params: Mapping[str, Param] | None = None, description: str = "",
                 compares: str | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin} registered a {slot} without a name (got {name!r})")
        if not callable(factory):
            raise PluginError(f"{origin}: factory of {slot} {name!r} is not callable "
                              f"(got {type(factory).__name__}); have you forgotten to pass the function itself?")
        for key, param in (params or {}).items():
            if not isinstance(param, Param):
                raise PluginError(f"{origin}: parameter {key!r} of {slot} {name!r} must be an "
                                  f"emcopilot.Param, got {type(param).__name__}")
        if slot == "metric":
            compares = compares or "instances"
            if compares not in COMPARES:
                raise PluginError(f"{origin}: metric {name!r} compares {compares!r}; it must compare one of "
                                  f"{', '.join(COMPARES)}")
        elif compares is not None:
            raise PluginError(f"{origin}: compares= is for metrics, not for the {slot} {name!r}")
        registry.add(Component(name, slot, factory, dict(params or {}), description.strip(), origin, compares))
    return register


def _make_register_recipes(registry: Registry, origin: Origin) -> RegisterRecipes:
    def register(path: Any) -> None:
        registry.recipe_sources.append((path, origin))
    return register


class PluginHost:
    """Loads plugins into a pluggy manager and fills a :class:`Registry`."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.origins: dict[str, Origin] = {}
        self.registry = Registry()
        self.failed: set[Origin] = set()

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for entry_point in sorted(entry_points(group=group), key=lambda ep: ep.name):
            distribution, version = _distribution_of(entry_point)
            origin = Origin(entry_point.name, entry_point.value, distribution, version)
            try:
                plugin = entry_point.load()
            except BaseException as error:  # a broken plugin must not break the host
                if isinstance(error, KeyboardInterrupt):
                    raise
                self.registry.broken.append(BrokenPlugin(origin, f"import failed: {type(error).__name__}: {error}"))
                continue
            self.add(plugin, origin)

    def add(self, plugin: Any, origin: Origin) -> None:
        """Register one plugin object (a module or any object with hook implementations)."""
        if origin.plugin in self.origins:
            self.registry.broken.append(BrokenPlugin(origin, f"two plugins are named {origin.plugin!r}: "
                                                             f"{self.origins[origin.plugin]} and {origin}; "
                                                             f"this one is not loaded"))
            return
        try:
            self.manager.register(plugin, name=origin.plugin)
        except pluggy.PluginValidationError as error:
            self.registry.broken.append(BrokenPlugin(origin, f"invalid hook implementation: {error}"))
            return
        self.origins[origin.plugin] = origin

    def collect(self) -> Registry:
        """Check hook names, then call every registration hook of every plugin."""
        self._check_pending()
        for plugin_name, origin in self.origins.items():
            plugin = self.manager.get_plugin(plugin_name)
            for slot, hook_name in SLOTS.items():
                self._call(plugin, hook_name, origin, _make_register(self.registry, slot, origin))
            self._call(plugin, "register_recipes", origin, _make_register_recipes(self.registry, origin))
        for origin in self.failed:  # half a plugin is worse than none: keep nothing it registered
            self.registry.drop_plugin(origin)
        return self.registry

    def _check_pending(self) -> None:
        """A plugin that implements a hook no spec declares (a misspelt name) is unloaded and listed."""
        known = ", ".join(list(SLOTS.values()) + ["register_recipes"])
        for _ in range(len(self.origins) + 1):
            try:
                self.manager.check_pending()
                return
            except pluggy.PluginValidationError as error:
                plugin = getattr(error, "plugin", None)
                name = next((n for n in self.origins if self.manager.get_plugin(n) is plugin), None)
                message = str(error)
                hint = did_you_mean(message.split("'")[1] if "'" in message else "", SLOTS.values())
                if name is None:  # pragma: no cover - pluggy names the plugin it refuses
                    raise PluginError(f"a plugin implements an unknown hook: {message}.{hint}") from None
                self.manager.unregister(name=name)
                origin = self.origins.pop(name)
                self.registry.broken.append(BrokenPlugin(origin, f"implements an unknown hook: {message}.{hint} "
                                                                 f"Hooks are: {known}"))

    def _call(self, plugin: Any, hook_name: str, origin: Origin, register: Callable) -> None:
        caller = getattr(self.manager.hook, hook_name)
        impls = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
        if not impls:
            return
        arguments = {"register": register}
        try:
            for impl in impls:  # an implementation may take fewer arguments than the spec
                impl.function(*[arguments[name] for name in impl.argnames])
        except PluginError as error:  # a registration the host refuses: the whole plugin is disabled
            self.failed.add(origin)
            self.registry.broken.append(BrokenPlugin(origin, f"{hook_name}: {error}"))
        except Exception as error:
            self.failed.add(origin)
            self.registry.broken.append(BrokenPlugin(origin, f"{hook_name} raised {type(error).__name__}: {error}"))


_REGISTRY: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or reload:
        host = PluginHost()
        host.load_entry_points()
        _REGISTRY = host.collect()
    return _REGISTRY


def build_registry(plugins: Iterable[tuple[str, Any]], *, entry_points_too: bool = False) -> Registry:
    """A registry from explicit ``(name, plugin)`` pairs (used by tests and embedders)."""
    host = PluginHost()
    if entry_points_too:
        host.load_entry_points()
    for name, plugin in plugins:
        host.add(plugin, Origin(name, getattr(plugin, "__name__", type(plugin).__name__), None, None))
    return host.collect()


def use_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests; ``None`` to reload lazily)."""
    global _REGISTRY
    _REGISTRY = registry
