"""Property-based fuzzing of the recipe loader: only RecipeError ever escapes, nothing executes."""
from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from emcopilot import RecipeError
from emcopilot.core.recipe import load_recipe
from tests.conftest import GOOD_RECIPE

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
values = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                          st.dictionaries(st.text(max_size=10), children, max_size=4)),
                      max_leaves=12)
KEYS = ["name", "description", "base", "sample", "prior_extractor", "generator", "physics_adapter",
        "segmenter", "metrics", "train", "plugin", "params", "working_pixel_size_nm", "diameter_nm", "kind"]


def load_text(tmp_path, text: str | bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        load_recipe(path)
    except RecipeError:
        pass


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text(fake_registry, tmp_path, text):
    load_text(tmp_path, text)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes(fake_registry, tmp_path, data):
    load_text(tmp_path, data)


@SETTINGS
@given(document=st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
def test_structured_documents(fake_registry, tmp_path, document):
    load_text(tmp_path, yaml.safe_dump(document))


@SETTINGS
@given(key_path=st.lists(st.sampled_from(KEYS + ["threshold", "depth", "profiles", "fast"]), min_size=1, max_size=3),
       value=values)
def test_mutations_of_a_good_recipe(fake_registry, tmp_path, key_path, value):
    document = yaml.safe_load(GOOD_RECIPE)
    node = document
    for key in key_path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[key_path[-1]] = value
    load_text(tmp_path, yaml.safe_dump(document))


@SETTINGS
@given(line=st.integers(0, 21), junk=st.sampled_from(["!!python/object/apply:os.system ['echo x']", "*undefined",
                                                      "&a [*a]", ": :", "{", "'", "\t", "!!binary AAAA", "%TAG ! x"]))
def test_injected_junk_lines(fake_registry, tmp_path, line, junk):
    lines = GOOD_RECIPE.splitlines()
    lines.insert(line, junk)
    load_text(tmp_path, "\n".join(lines))
