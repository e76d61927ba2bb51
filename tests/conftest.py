"""Shared fixtures.

``fake_registry`` builds a registry from in-test plugins only (entry-point
discovery blocked), so core behaviour is tested without the built-ins.
``shared_data`` is the development data folder; tests using it skip when it
is absent (for example on a machine without ../shared). ``tiny_sam_checkpoint``
is a randomly initialised SAM of :data:`TINY_SAM`'s architecture, for the tests
that run the ``sam`` prior's code path. Qt runs offscreen (the napari tests need
no display).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from emcopilot import Param, hookimpl  # noqa: E402
from emcopilot.core.plugins import build_registry, use_registry  # noqa: E402

# Property tests draw the same examples on every run and machine, so a stochastic
# physics tolerance cannot make CI flaky; set HYPOTHESIS_PROFILE=explore to search anew.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))



try:  # torch's own thread count, before any test changes it
    import torch as _torch
    _TORCH_THREADS = _torch.get_num_threads()
except ImportError:  # the tests that need torch skip
    _torch = None


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Tests that set torch's thread count (to keep a small fit fast) leave it as they found it: the
    count changes float sums, so a later test comparing two runs must not inherit another's (nor the
    ``OMP_NUM_THREADS`` a Dask worker set-up leaves in the environment of the processes it starts)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    yield
    if _torch is not None and _torch.get_num_threads() != _TORCH_THREADS:
        _torch.set_num_threads(_TORCH_THREADS)
    if os.environ.get("OMP_NUM_THREADS") != omp:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMCOPILOT_SHARED_DATA", REPO.parent / "shared" / "data"))
#: a SAM small enough to run in a test (exercises the code path, not quality)
TINY_SAM = dict(embed_dim=32, depth=2, num_heads=2, patch_size=16, img_size=64, window_size=2,
                global_attn_indexes=[1], mlp_ratio=2.0, prompt_dim=32, decoder_depth=1, decoder_mlp_dim=64,
                decoder_heads=2, iou_hidden_dim=32, mask_in_chans=16)


@pytest.fixture(scope="session")
def tiny_sam_architecture() -> dict:
    return dict(TINY_SAM)


@pytest.fixture(scope="session")
def tiny_sam_checkpoint(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    pytest.importorskip("segment_anything")
    from emcopilot_plugins.priors.sam import build_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(build_sam(TINY_SAM).state_dict(), path)
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not found at {SHARED_DATA}")
    return SHARED_DATA


def _factory(params, sample):
    return SimpleNamespace(params=params, sample=sample)


class FakePlugin:
    """One component per slot, with a small params schema."""

    @hookimpl
    def register_prior_extractors(self, register):
        register("blobs", _factory, params={"threshold": Param(0.5, float, min=0.0, max=1.0),
                                            "radius_nm": Param(1.0, float, min=0.0, unit="nm")},
                 description="test extractor")

    @hookimpl
    def register_generators(self, register):
        register("flat", _factory, description="test generator")

    @hookimpl
    def register_physics_adapters(self, register):
        register("noisy", _factory, params={"dose_e_per_A2": Param(1000.0, float, min=0.0),
                                            "mode": Param("poisson", str, choices=("poisson", "gauss"))})

    @hookimpl
    def register_segmenters(self, register):
        register("net", _factory, params={"depth": Param(3, int, min=1, max=8),
                                          "channels": Param([16, 32], list, items=int)})

    @hookimpl
    def register_metrics(self, register):
        register("count", _factory)


@pytest.fixture
def fake_registry():
    registry = build_registry([("fake", FakePlugin())])
    use_registry(registry)
    yield registry
    use_registry(None)


GOOD_RECIPE = """\
name: test-recipe
description: a recipe for tests
sample:
  material: Pt
  modality: haadf-stem
  diameter_nm: [1.0, 5.0]
  working_pixel_size_nm: 0.2
prior_extractor:
  plugin: blobs
  params: {threshold: 0.3}
generator:
  plugin: flat
physics_adapter:
  plugin: noisy
segmenter:
  plugin: net
metrics:
  - plugin: count
train:
  seed: 1
  profiles:
    fast: {segmenter_steps: 10}
"""


@pytest.fixture
def good_recipe(tmp_path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD_RECIPE)
    return path
