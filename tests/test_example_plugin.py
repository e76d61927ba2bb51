"""A third-party plugin package installs, lists and validates without touching emcopilot.

The example in ``examples/emcopilot-idpc`` is pip-installed into a throw-away
target folder that a subprocess puts on its path, so the test environment is
not modified and nothing needs uninstalling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "emcopilot-idpc"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> dict:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True,
                   cwd=tmp_path_factory.mktemp("build"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def emcopilot(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emcopilot", *args], env=env, capture_output=True, text=True)


def test_installed_plugin_is_listed_with_distribution_and_version(example_site):
    result = emcopilot(example_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(row["slot"], row["name"]): row for row in json.loads(result.stdout)}
    row = rows[("physics_adapter", "idpc-stem")]
    assert row["distribution"] == "emcopilot-idpc" and row["version"] == "0.2.0" and row["error"] is None
    assert row["params"]["dose_e_per_A2"]["unit"] == "e/Å²"


def test_plugin_recipe_is_listed_and_validates(example_site):
    listed = emcopilot(example_site, "recipes")
    assert "nanoparticles-idpc" in listed.stdout, listed.stderr
    result = emcopilot(example_site, "validate", "nanoparticles-idpc", "--show")
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["physics_adapter"]["plugin"] == "idpc-stem"
    assert resolved["sample"]["modality"] == "idpc-stem"
    assert resolved["segmenter"]["plugin"] == "unet"  # inherited from the built-in base


def test_plugin_component_runs(example_site):
    code = ("import numpy as np; from emcopilot.core.plugins import get_registry;"
            "a = get_registry().get('physics_adapter', 'idpc-stem').create({});"
            "out = a.apply(np.ones((64, 64)), 0.1, np.random.default_rng(0));"
            "print(out.shape, out.dtype, bool(np.isfinite(out).all()))")
    result = subprocess.run([sys.executable, "-c", code], env=example_site, capture_output=True, text=True)
    assert result.stdout.strip() == "(64, 64) float32 True", result.stderr


def test_plugin_component_passes_the_conformance_kit(example_site):
    code = ("from emcopilot.testing import check_component, default_sample;"
            "print(len(check_component('physics_adapter', 'idpc-stem', sample=default_sample(modality='idpc-stem'))))")
    result = subprocess.run([sys.executable, "-c", code], env=example_site, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "4", result.stderr


def test_without_the_package_it_is_absent():
    result = emcopilot(dict(os.environ), "plugins", "--json")
    assert "idpc-stem" not in result.stdout
