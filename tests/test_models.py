"""Model folders: the host writes the manifest, plugins their weights; loading follows the manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emcopilot import __version__  # noqa: E402
from emcopilot.core.errors import EmcopilotError  # noqa: E402
from emcopilot.core.interfaces import Instances, TrainBudget  # noqa: E402
from emcopilot.pipeline.models import load_model, read_manifest, save_model  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402

SAMPLE = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.2, "diameter_nm": [1.5, 6.0]})
PARAMS = {"depth": 1, "width": 2, "min_score": 0.3}


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    segmenter = get_registry().get("segmenter", "unet").create(PARAMS, SAMPLE)
    image = np.zeros((32, 32), np.float32)
    image[8:16, 8:16] = 1
    segmenter.fit([image], [Instances(labels=(image > 0).astype(np.int32))], None,
                  budget=TrainBudget(steps=2, batch_size=1, crop_px=16, seed=0, progress=False))
    return segmenter


def test_the_manifest_records_what_made_the_model_and_loading_follows_it(trained, tmp_path):
    folder = save_model(trained, tmp_path / "model", plugin="unet", params=PARAMS, sample=SAMPLE)
    manifest = json.loads((folder / "model.json").read_text())
    assert manifest["slot"] == "segmenter" and manifest["plugin"] == "unet"
    assert manifest["distribution"] == "emcopilot" and manifest["emcopilot_version"] == __version__
    assert manifest["params"]["min_score"] == 0.3 and manifest["params"]["foreground_threshold"] == 0.5  # resolved
    assert manifest["sample"]["diameter_nm"] == [1.5, 6.0] and manifest["working_pixel_size_nm"] == 0.2
    # what the plugin wrote about itself does not decide which plugin loads the folder
    config = json.loads((folder / "config.json").read_text())
    config["segmenter"] = {"plugin": "someone-else", "params": {"depth": 5}}
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(folder, params={"min_score": 0.1})
    assert type(loaded) is type(trained) and loaded.params["min_score"] == 0.1 and loaded.params["depth"] == 1
    assert read_manifest(folder)["plugin"] == "unet"


def test_a_model_made_by_another_distribution_warns(trained, tmp_path):
    folder = save_model(trained, tmp_path / "model", plugin="unet", params=PARAMS, sample=SAMPLE)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, "distribution": "lab-unet"}))
    with pytest.warns(UserWarning, match="made by segmenter 'unet' from lab-unet"):
        load_model(folder)


def test_save_model_checks_the_params_before_writing(trained, tmp_path):
    with pytest.raises(EmcopilotError, match="depth"):
        save_model(trained, tmp_path / "model", plugin="unet", params={"depth": "deep"}, sample=SAMPLE)
    assert not (tmp_path / "model").exists()
