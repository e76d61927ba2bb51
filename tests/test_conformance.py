"""Every registered component passes the conformance kit (``emcopilot.testing``), and the kit catches
what it says it catches."""
from __future__ import annotations

import numpy as np
import pytest

from emcopilot import Instances
from emcopilot.core.errors import EmcopilotError
from emcopilot.core.plugins import SLOTS, get_registry
from emcopilot.testing import ConformanceError, check_component, default_sample, tiny_micrograph

ALL = [(slot, component.name) for slot in SLOTS for component in get_registry().all(slot)]

#: the sample each component is checked with (default: HAADF particles)
SAMPLES = {("prior_extractor", "atoms"): default_sample("atoms"),
           ("physics_adapter", "bf-stem"): default_sample(modality="bf-stem")}


def test_every_slot_has_components():
    assert {slot for slot, _ in ALL} == set(SLOTS)


@pytest.mark.parametrize("slot,name", ALL, ids=[f"{slot}-{name}" for slot, name in ALL])
def test_registered_component_conforms(slot, name, request):
    params = {}
    if (slot, name) == ("prior_extractor", "sam"):
        params = {"checkpoint": str(request.getfixturevalue("tiny_sam_checkpoint")), "device": "cpu",
                  "points_per_side": 4, "object_px_in_model": 8.0}
    if (slot, name) == ("metric", "lpips"):
        from emcopilot_plugins.metrics.image import lpips_backbone_file
        if not lpips_backbone_file("alex").is_file():
            # nothing is downloaded at run time: without its ImageNet backbone it refuses, naming the file
            with pytest.raises(EmcopilotError, match="alex"):
                check_component(slot, name)
            return
    passed = check_component(slot, name, params=params, sample=SAMPLES.get((slot, name)))
    assert passed


class _Shifty:
    """A prior extractor that answers on another grid and differently each time."""

    def __init__(self):
        self.calls = 0

    def extract(self, micrograph):
        self.calls += 1
        return Instances(labels=np.zeros((micrograph.shape[0] // 2, micrograph.shape[1] // 2), np.int32))


class _Forgetful:
    """An adapter whose restore() ignores what fit() measured."""

    def __init__(self):
        self.gain = 1.0

    def fit(self, micrographs):
        self.gain = float(np.mean([m.data.mean() for m in micrographs]))
        return {"gain": self.gain}

    def restore(self, fitted):
        pass

    def apply(self, clean, pixel_size_nm, rng, layout=None):
        return (clean * self.gain + rng.normal(0, 1, clean.shape)).astype(np.float32)


def test_the_kit_names_the_broken_contract():
    with pytest.raises(ConformanceError, match=r"prior_extractor _Shifty: .*shape \(64, 64\).*own grid"):
        check_component("prior_extractor", _Shifty())
    with pytest.raises(ConformanceError, match="restore.*degrades differently"):
        check_component("physics_adapter", _Forgetful())
    with pytest.raises(ConformanceError, match="non-empty mapping"):
        check_component("metric", lambda a, b: {})
    with pytest.raises(ConformanceError, match="'nan' must be a finite number"):
        check_component("metric", lambda a, b: {"nan": float("nan")})
    with pytest.raises(ConformanceError, match="unknown slot"):
        check_component("detector", _Shifty())


def test_tiny_micrograph_has_the_samples_objects():
    micrograph, labels = tiny_micrograph(default_sample())
    assert micrograph.shape == labels.shape == (128, 128) and labels.max() == 9
    assert micrograph.data[labels > 0].mean() > 1.5 * micrograph.data[labels == 0].mean()
    dark, _ = tiny_micrograph(default_sample(modality="bf-stem"))
    assert dark.data[labels > 0].mean() < dark.data[labels == 0].mean()
