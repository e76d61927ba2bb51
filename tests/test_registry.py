"""The plugin host: registration, lookup errors, broken and misspelled plugins."""
from __future__ import annotations

import inspect

import pytest

from emcopilot import PluginError, hookimpl, hookspecs
from emcopilot.plugins import SLOTS, PluginHost, build_registry, get_registry
from tests.conftest import FakePlugin


def test_every_slot_has_a_documented_hook_taking_register():
    for slot, hook_name in list(SLOTS.items()) + [("recipes", "register_recipes")]:
        hook = getattr(hookspecs, hook_name)
        assert list(inspect.signature(hook).parameters) == ["register"], hook_name
        doc = inspect.getdoc(hook)
        assert doc and "recipe" in doc.lower(), f"{hook_name} must say how to use it in a recipe"


def test_registry_records_origin_and_params(fake_registry):
    component = fake_registry.get("prior_extractor", "blobs")
    assert component.slot == "prior_extractor"
    assert component.origin.plugin == "fake"
    assert set(component.params) == {"threshold", "radius_nm"}
    made = component.create({"threshold": 0.1})
    assert made.params == {"threshold": 0.1, "radius_nm": 1.0}


def test_unknown_name_lists_what_exists_with_did_you_mean(fake_registry):
    with pytest.raises(PluginError) as error:
        fake_registry.get("prior_extractor", "blob")
    assert "Did you mean 'blobs'" in str(error.value)
    assert "Available prior_extractors: blobs" in str(error.value)


def test_unknown_slot(fake_registry):
    with pytest.raises(PluginError, match="unknown slot 'segmentor'.*segmenter"):
        fake_registry.get("segmentor", "net")


def test_duplicate_name_names_both_origins():
    with pytest.raises(PluginError) as error:
        build_registry([("first", FakePlugin()), ("second", FakePlugin())])
    message = str(error.value)
    assert "registered twice" in message and "'first'" in message and "'second'" in message


def test_misspelled_hook_is_an_error():
    class Misspelled:
        @hookimpl
        def register_segmentors(self, register):  # typo
            pass

    with pytest.raises(PluginError, match="unknown hook.*register_segmentors.*Did you mean 'register_segmenters'"):
        build_registry([("typo", Misspelled())])


def test_hook_with_unknown_argument_is_rejected_and_others_still_load():
    class BadArgs:
        @hookimpl
        def register_metrics(self, register, flavour):
            pass

    registry = build_registry([("bad", BadArgs()), ("fake", FakePlugin())])
    assert registry.get("metric", "count")
    assert [b.origin.plugin for b in registry.broken] == ["bad"]
    assert "flavour" in registry.broken[0].error


def test_hook_may_take_fewer_arguments():
    calls = []

    class NoArgs:
        @hookimpl
        def register_metrics(self):
            calls.append(True)

    build_registry([("noargs", NoArgs())])
    assert calls == [True]


def test_plugin_whose_hook_raises_is_reported_not_fatal():
    class Raises:
        @hookimpl
        def register_generators(self, register):
            raise RuntimeError("boom")

    registry = build_registry([("raises", Raises()), ("fake", FakePlugin())])
    assert registry.get("generator", "flat")
    assert "RuntimeError: boom" in registry.broken[0].error


def test_import_failure_is_listed_with_distribution(monkeypatch):
    class FakeDist:
        metadata = {"Name": "emcopilot-broken"}
        version = "9.9"

    class FailingEntryPoint:
        name, value, dist = "broken", "emcopilot_broken.plugin", FakeDist()

        def load(self):
            raise ImportError("No module named 'emcopilot_broken'")

    class GoodEntryPoint:
        name, value, dist = "good", "tests.conftest", None

        def load(self):
            return FakePlugin()

    monkeypatch.setattr("emcopilot.plugins.entry_points", lambda group: [FailingEntryPoint(), GoodEntryPoint()])
    host = PluginHost()
    host.load_entry_points()
    registry = host.collect()
    assert registry.get("metric", "count")
    [broken] = registry.broken
    row = broken.as_dict()
    assert row["distribution"] == "emcopilot-broken" and row["version"] == "9.9"
    assert "No module named 'emcopilot_broken'" in row["error"]
    with pytest.raises(PluginError, match="broken"):
        registry.get("metric", "missing")


def test_factory_failure_names_plugin_and_slot():
    def explode(params, sample):
        raise ValueError("needs a checkpoint")

    class Exploding:
        @hookimpl
        def register_segmenters(self, register):
            register("explodes", explode)

    registry = build_registry([("exploding", Exploding())])
    with pytest.raises(PluginError, match="segmenter 'explodes' from plugin 'exploding'.*needs a checkpoint"):
        registry.get("segmenter", "explodes").create({})


@pytest.mark.parametrize("bad", [
    lambda register: register("", lambda p, s: None),
    lambda register: register("x", "not callable"),
    lambda register: register("x", lambda p, s: None, params={"a": 3}),
])
def test_bad_registration_calls_are_errors(bad):
    class Bad:
        @hookimpl
        def register_metrics(self, register):
            bad(register)

    with pytest.raises(PluginError):
        build_registry([("bad", Bad())])


def test_builtins_register_through_entry_points():
    registry = get_registry(reload=True)
    assert not registry.broken, registry.broken
    origins = {component.origin.distribution for component in registry.all()}
    assert origins == {"emcopilot"}
    assert any(origin.plugin == "builtin_recipes" for _, origin in registry.recipe_sources)
