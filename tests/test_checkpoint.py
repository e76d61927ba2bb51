"""Checkpoints: safetensors + config.json round trip; pickles and mismatches refused."""
from __future__ import annotations

import json
import pickle

import pytest

torch = pytest.importorskip("torch")

from emcopilot.core.checkpoint import (load_checkpoint, read_config, restore_module,  # noqa: E402
                                  save_checkpoint)
from emcopilot.core.errors import CheckpointError  # noqa: E402


def _net(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, width, 3), torch.nn.BatchNorm2d(width), torch.nn.Conv2d(width, 1, 1))


def test_round_trip_restores_identical_weights(tmp_path):
    net = _net()
    save_checkpoint(tmp_path / "ck", net, {"architecture": {"width": 4, "depth": (1, 2)}, "mode": "particles"})
    config, state_dicts = load_checkpoint(tmp_path / "ck", expected_architecture={"width": 4, "depth": [1, 2]})
    assert config["mode"] == "particles" and config["weights"]["model"]["file"] == "model.safetensors"
    fresh = _net()
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.add_(1.0)
    restore_module(fresh, state_dicts["model"])
    for key, tensor in net.state_dict().items():
        assert torch.equal(tensor, fresh.state_dict()[key]), key


def test_several_networks_in_one_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"generator": _net(2), "discriminator": _net(3).state_dict()}, {"architecture": {}})
    _, state_dicts = load_checkpoint(tmp_path)
    assert set(state_dicts) == {"generator", "discriminator"}
    assert (tmp_path / "generator.safetensors").is_file()


def test_architecture_mismatch_names_the_key(tmp_path):
    save_checkpoint(tmp_path, _net(), {"architecture": {"width": 4, "depth": 3}})
    with pytest.raises(CheckpointError, match=r"width: stored 4, expected 8") as info:
        load_checkpoint(tmp_path, expected_architecture={"width": 8, "depth": 3, "mode": "atoms"})
    assert "mode: missing" in str(info.value)


def test_shape_mismatch_is_named_before_loading(tmp_path):
    save_checkpoint(tmp_path, _net(4), {"architecture": {}})
    _, state_dicts = load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: 0\.bias stored \(4,\) vs model \(5,\)"):
        restore_module(_net(5), state_dicts["model"])


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    torch.save(_net().state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(path)


def test_folder_with_only_a_pickle_says_why(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"no config\.json; it holds pickle files \(model\.pt\)"):
        read_config(tmp_path)


@pytest.mark.parametrize("payload", ["pickle", "torch"])
def test_pickle_renamed_to_safetensors_is_refused(tmp_path, payload):
    save_checkpoint(tmp_path, _net(), {"architecture": {}})
    target = tmp_path / "model.safetensors"
    if payload == "pickle":
        target.write_bytes(pickle.dumps({"a": 1}))
    else:
        torch.save(_net().state_dict(), target)
    config = json.loads((tmp_path / "config.json").read_text())
    config["weights"]["model"].pop("sha256")  # even without the hash check
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not safetensors|pickle"):
        load_checkpoint(tmp_path)


def test_tampered_weights_fail_the_hash_check(tmp_path):
    save_checkpoint(tmp_path, _net(), {"architecture": {}})
    save_checkpoint(tmp_path / "other", _net(5), {"architecture": {}})
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(tmp_path)


def test_weight_file_outside_the_folder_is_refused(tmp_path):
    save_checkpoint(tmp_path, _net(), {"architecture": {}})
    config = json.loads((tmp_path / "config.json").read_text())
    config["weights"]["model"]["file"] = "../model.safetensors"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="must name a file in the folder"):
        load_checkpoint(tmp_path)


def test_foreign_config_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not an emcopilot checkpoint"):
        read_config(tmp_path)


def test_non_json_config_is_refused_on_save(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, _net(), {"architecture": {}, "bad": object()})
