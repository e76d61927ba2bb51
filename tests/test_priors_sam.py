"""The ``sam`` prior extractor with a tiny randomly initialised SAM (exercises the code path, not quality)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

from emcopilot import Micrograph  # noqa: E402
from emcopilot.core.errors import CheckpointError, PluginError  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402
from emcopilot_plugins.priors.filtering import masks_to_labels  # noqa: E402
from emcopilot_plugins.priors.sam import architecture, tile_starts  # noqa: E402

SAMPLE = Sample.from_dict({"kind": "particles", "diameter_nm": [1.0, 3.0], "working_pixel_size_nm": 0.2})
#: settings that let a random model's masks through the filters
PERMISSIVE = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
              "min_contrast_snr": 0.0, "min_solidity": 0.0, "object_px_in_model": 8.0,
              "max_recovery_prompts": 3, "device": "cpu"}


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_sam_checkpoint):
    torch.set_num_threads(1)
    return tiny_sam_checkpoint


def particles(shape=(160, 160)):
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    image = rng.normal(0, 0.1, shape)
    for row, col in [(40, 40), (40, 110), (110, 60), (120, 130)]:
        image += ((rows - row) ** 2 + (cols - col) ** 2) <= 36
    return Micrograph(image.astype(np.float32), pixel_size_nm=0.2, name="p.tif")


def create(params):
    return get_registry().get("prior_extractor", "sam").create(params, SAMPLE)


def test_no_checkpoint_names_both_ways(monkeypatch):
    monkeypatch.delenv("EMCOPILOT_SAM_CHECKPOINT", raising=False)
    with pytest.raises(PluginError) as error:
        create({})
    message = str(error.value)
    assert "checkpoint" in message and "EMCOPILOT_SAM_CHECKPOINT" in message and "classical" in message


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(PluginError, match="does not exist"):
        create({"checkpoint": str(tmp_path / "nope.pth")})


def test_architecture_is_inferred_from_shapes(tiny_checkpoint, tiny_sam_architecture):
    state = torch.load(tiny_checkpoint, weights_only=True)
    arch = architecture(state)
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "img_size", "window_size", "prompt_dim",
                "decoder_depth", "decoder_mlp_dim", "iou_hidden_dim", "mask_in_chans"):
        assert arch[key] == tiny_sam_architecture[key], key
    assert arch["global_attn_indexes"] == [1] and arch["model_type"] == "custom"


def test_whole_path_runs_with_the_tiny_model(tiny_checkpoint):
    extractor = create({**PERMISSIVE, "checkpoint": str(tiny_checkpoint)})
    instances = extractor.extract(particles())
    meta = instances.metadata
    assert instances.labels.shape == (160, 160) and instances.labels.dtype == np.int32
    assert meta["extractor"] == "sam" and meta["model_type"] == "custom" and meta["device"] == "cpu"
    assert meta["tiles"] >= 4 and meta["masks"] > 0
    assert meta["candidates"] == meta["kept"] + meta["dropped_size"] + meta["dropped_contrast"] \
        + meta["dropped_shape"] + meta["dropped_support"]
    assert 1 <= meta["recovery_prompts"] <= 3
    ids = np.unique(instances.labels)
    assert list(ids) == list(range(int(ids.max()) + 1))


def test_checkpoint_from_environment_and_safetensors(tiny_checkpoint, tmp_path, monkeypatch):
    from safetensors.torch import save_file
    state = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    monkeypatch.setenv("EMCOPILOT_SAM_CHECKPOINT", str(path))
    extractor = create({**PERMISSIVE, "recover_missed": False})
    assert extractor.checkpoint == path
    assert extractor.extract(particles()).metadata["recovery_prompts"] == 0


class NotATensor:
    pass


def test_pickled_code_and_wrong_weights_are_refused(tiny_checkpoint, tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": NotATensor()}, evil)
    with pytest.raises(PluginError, match="tensors only"):
        create({"checkpoint": str(evil)})
    state = torch.load(tiny_checkpoint, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(PluginError, match="does not match"):
        create({"checkpoint": str(broken)})
    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2)}, other)
    with pytest.raises(PluginError, match="not a Segment Anything state dict"):
        create({"checkpoint": str(other)})
    assert issubclass(CheckpointError, Exception)


@pytest.mark.parametrize("length,tile,overlap", [(100, 100, 10), (1000, 256, 40), (257, 256, 30), (50, 64, 8)])
def test_tiles_cover_the_image_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start:start + tile] = True
    assert covered.all() and starts[0] == 0
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_masks_resolved_duplicates_and_containers():
    shape = (40, 40)
    a = np.zeros(shape, bool)
    a[5:15, 5:15] = True
    b = np.zeros(shape, bool)
    b[20:30, 20:30] = True
    a_again = a.copy()
    a_again[15, 5:15] = True                      # IoU 0.91 with a: duplicate
    both = np.zeros(shape, bool)
    both[2:35, 2:35] = True                       # contains a and b: a cluster / the support
    labels, scores, report = masks_to_labels([a, b, a_again, both], [0.9, 0.8, 0.7, 0.6], shape)
    assert labels.max() == 2 and report["duplicates"] == 1 and report["containers"] == 1
    assert (labels[a] == 1).all() and (labels[b] == 2).all() and list(scores) == [0.9, 0.8]
