"""The pix2pix generator: training, selection, rendering, checkpoints and bad input (tiny CPU nets)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from emcopilot.core.errors import CheckpointError, InputError  # noqa: E402
from emcopilot.core.interfaces import Generator, Micrograph, TrainBudget  # noqa: E402
from emcopilot.specimen.layout import LayoutSpec, sample_layout  # noqa: E402
from emcopilot.core.params import validate_params  # noqa: E402
from emcopilot_plugins.generators.pix2pix import PARAMS, make_pix2pix  # noqa: E402
from emcopilot_plugins.generators.pix2pix.data import condition_channels  # noqa: E402

TINY = {"width": 4, "depth": 2, "validate_every": 4, "validation_crops": 4}
BUDGET = TrainBudget(steps=8, batch_size=2, crop_px=32, seed=3, progress=False)


def make(**overrides):
    return make_pix2pix(validate_params(PARAMS, {**TINY, **overrides}, "pix2pix"), None)


def toy_pair(seed: int, size: int = 80):
    """Bright disks on a smooth support, with a little noise."""
    from scipy.ndimage import gaussian_filter
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    for label in range(1, 5):
        rows, cols = disk((rng.integers(5, size - 5), rng.integers(5, size - 5)), rng.integers(2, 5),
                          shape=labels.shape)
        labels[rows, cols] = label
    image = 30 + 40 * gaussian_filter(rng.normal(size=labels.shape), 3) + 120 * (labels > 0)
    image += rng.normal(0, 2, labels.shape)
    return labels, Micrograph(image.astype(np.float32), name=f"toy{seed}.tif")


@pytest.fixture(scope="module")
def pairs():
    made = [toy_pair(seed) for seed in range(3)]
    return [labels for labels, _ in made], [image for _, image in made]


@pytest.fixture(scope="module")
def trained(pairs, tmp_path_factory):
    torch.set_num_threads(1)
    model = make()
    workdir = tmp_path_factory.mktemp("fit")
    history = model.fit(*pairs, workdir, budget=BUDGET)
    return model, history, workdir


def test_implements_the_generator_protocol():
    assert isinstance(make(), Generator)


def test_l1_loss_falls_while_training(pairs, tmp_path):
    torch.set_num_threads(1)
    model = make(width=8, learning_rate=2e-3, validate_every=100)
    history = model.fit(*pairs, tmp_path, budget=TrainBudget(steps=40, batch_size=4, crop_px=32, seed=0,
                                                             progress=False))
    losses = history["loss_l1"]
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_history_is_json_and_keeps_the_best_checkpoint_by_each_metric(trained):
    model, history, workdir = trained
    json.dumps(history)
    assert [entry["step"] for entry in history["validation"]] == [4, 8]
    for name, key, better in (("ssim", "ssim", max), ("psnr", "psnr_dB", max), ("realism-gap", "realism_gap", min)):
        values = {entry["step"]: entry[key] for entry in history["validation"]}
        assert history["best"][name]["value"] == better(values.values())
        assert values[history["best"][name]["step"]] == history["best"][name]["value"]
        assert (workdir / f"best-{name}" / "generator.safetensors").is_file()
    assert history["selected_by"] == "ssim" and history["selected_step"] == history["best"]["ssim"]["step"]
    assert history["lpips"].startswith(("available", "unavailable"))


def test_the_kept_generator_is_the_selected_checkpoint(trained, tmp_path):
    model, history, workdir = trained
    other = make()
    other.load(workdir / f"best-{history['selected_by']}")
    label = toy_pair(7, size=40)[0]
    assert np.array_equal(model.generate([label], np.random.default_rng(0))[0],
                          other.generate([label], np.random.default_rng(0))[0])


def test_training_is_deterministic_with_a_seed(pairs, trained, tmp_path):
    _, history, _ = trained
    torch.set_num_threads(1)  # as `trained` did: the thread count changes float sums
    again = make().fit(*pairs, tmp_path, budget=BUDGET)
    assert again["loss_l1"] == history["loss_l1"] and again["loss_d"] == history["loss_d"]


def test_generate_layouts_and_plain_arrays_of_any_size(trained):
    model, _, _ = trained
    layout = sample_layout(LayoutSpec("particles", 2.0, 0.2, 0.01), (37, 53), 0.2, np.random.default_rng(1))
    images = model.generate([layout, layout.labels, np.zeros((20, 21), np.int32)], np.random.default_rng(0))
    assert [image.shape for image in images] == [(37, 53), (37, 53), (20, 21)]
    assert all(image.dtype == np.float32 and np.isfinite(image).all() for image in images)
    assert np.array_equal(images[0], images[1])


def test_save_load_round_trip_reproduces_outputs_exactly(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "ckpt")
    loaded = make()
    loaded.load(tmp_path / "ckpt")
    labels = toy_pair(11, size=40)[0]
    assert np.array_equal(model.generate([labels], np.random.default_rng(5))[0],
                          loaded.generate([labels], np.random.default_rng(5))[0])
    assert loaded.intensity == model.intensity


def test_noise_channel_round_trip_with_the_same_rng(pairs, tmp_path):
    model = make(noise_channel=True)
    model.fit(*pairs, tmp_path / "fit", budget=TrainBudget(steps=2, batch_size=2, crop_px=32, progress=False))
    model.save(tmp_path / "ckpt")
    loaded = make(noise_channel=True)
    loaded.load(tmp_path / "ckpt")
    labels = pairs[0][0]
    first = model.generate([labels], np.random.default_rng(5))[0]
    assert np.array_equal(first, loaded.generate([labels], np.random.default_rng(5))[0])
    assert not np.array_equal(first, loaded.generate([labels], np.random.default_rng(6))[0])


def test_a_checkpoint_of_another_architecture_is_refused_by_name(trained, tmp_path):
    model, _, _ = trained
    model.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"width: stored 4, expected 8"):
        make(width=8).load(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="thickness_channel"):
        make(thickness_channel=False).load(tmp_path / "ckpt")


def test_a_pickle_checkpoint_is_refused(trained, tmp_path):
    model, _, _ = trained
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(model.generator.state_dict(), folder / "generator.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        make().load(folder)
    model.save(tmp_path / "ckpt")  # a pickle renamed to .safetensors
    torch.save(model.generator.state_dict(), tmp_path / "ckpt" / "generator.safetensors")
    with pytest.raises(CheckpointError, match="pickle|zip"):
        make().load(tmp_path / "ckpt")


def test_generate_or_save_before_training_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="fit"):
        make().generate([np.zeros((16, 16), np.int32)], np.random.default_rng(0))
    with pytest.raises(CheckpointError, match="fit"):
        make().save(tmp_path)


@pytest.mark.parametrize("case, message", [
    ("mismatch", r"pair 1 \(toy1.tif\): label map is 80x70 px but the image is 80x80 px"),
    ("empty", r"pair 0 \(toy0.tif\): the label map is empty"),
    ("one pair", "at least 2"),
    ("small", "needs at least 96 rows"),
    ("count", "2 label maps but 3 images"),
    ("float labels", "integer instance ids"),
])
def test_bad_training_input_is_refused_with_a_clear_error(pairs, tmp_path, case, message):
    labels, images = [label.copy() for label in pairs[0]], list(pairs[1])
    budget = BUDGET
    if case == "mismatch":
        labels[1] = labels[1][:, :70]
    elif case == "empty":
        labels[0][:] = 0
    elif case == "one pair":
        labels, images = labels[:1], images[:1]
    elif case == "small":
        budget = TrainBudget(steps=1, crop_px=48, progress=False)
    elif case == "count":
        labels = labels[:2]
    elif case == "float labels":
        labels[0] = labels[0].astype(float)
    with pytest.raises(InputError, match=message):
        make().fit(labels, images, tmp_path, budget=budget)


def test_crop_size_must_fit_the_unet_depth(pairs, tmp_path):
    with pytest.raises(InputError, match="multiple of 2\\*\\*depth = 4"):
        make().fit(*pairs, tmp_path, budget=TrainBudget(steps=1, crop_px=34, progress=False))
    with pytest.raises(InputError, match="PatchGAN needs crops of at least 32 px"):
        make().fit(*pairs, tmp_path, budget=TrainBudget(steps=1, crop_px=16, progress=False))


def test_selecting_by_lpips_without_backbone_weights_fails_before_training(pairs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="alexnet"):
        make(select_by="lpips").fit(*pairs, tmp_path, budget=BUDGET)


@pytest.mark.parametrize("options", [{"discriminator": "pixel", "gan_loss": "bce", "lambda_ssim": 1.0,
                                      "norm": "instance"}, {"norm": "none", "select_by": "realism-gap"}])
def test_other_discriminators_losses_and_norms_train(pairs, tmp_path, options):
    history = make(**options).fit(*pairs, tmp_path, budget=TrainBudget(steps=2, batch_size=2, crop_px=32,
                                                                        progress=False))
    assert np.isfinite(history["loss_l1"]).all()
    assert history["selected_by"] == options.get("select_by", "ssim")
    if options.get("lambda_ssim"):
        assert len(history["loss_ssim"]) == 2


def test_condition_channels_follow_the_sphere_thickness_model():
    from skimage.draw import disk

    labels = np.zeros((41, 41), np.int32)
    labels[disk((20, 20), 10)] = 1
    labels[0:2, 0:2] = 2
    foreground, boundary, thickness = condition_channels(labels, boundary=True, thickness=True)
    assert np.array_equal(foreground, labels > 0)
    assert boundary[20, 11] == 1 and boundary[20, 20] == 0 and boundary[5, 5] == 0
    assert thickness[20, 20] == pytest.approx(1.0) and thickness[0, 0] == pytest.approx(1.0)
    assert thickness[20, 11] < 0.5 < thickness[20, 15] < thickness[20, 20]
    assert thickness[labels == 0].max() == 0
    radius = 10.5  # largest edge distance of the disk
    e = 6.0  # pixel (20, 15) is 6 px from the edge counting the edge pixel as 1
    assert thickness[20, 15] == pytest.approx(np.sqrt(e * (2 * radius - e)) / radius, abs=0.1)


def test_listing_the_plugin_imports_no_torch():
    code = ("import sys, emcopilot_plugins.generators.pix2pix as p, emcopilot_plugins.metrics.image; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(sorted(p.PARAMS))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "select_by" in result.stdout


def test_registered_with_the_declared_params():
    from emcopilot.core.plugins import get_registry

    component = get_registry().get("generator", "pix2pix")
    assert component.params["select_by"].default == "ssim"
    assert component.params["discriminator"].choices == ("patch", "pixel")
    model = component.create({"width": 4, "depth": 2})
    assert model.architecture()["in_channels"] == 3


@pytest.mark.parametrize("header_px", [0x180, 0x4B50])  # first byte 0x80 (pickle's), first bytes "PK" (zip's)
def test_safetensors_whose_header_length_looks_like_a_pickle_still_loads(tmp_path, header_px):
    from safetensors.torch import load_file

    from emcopilot.core.checkpoint import _check_safetensors_bytes

    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (header_px - len(header))  # safetensors pads its header with spaces
    path = tmp_path / "model.safetensors"
    path.write_bytes(header_px.to_bytes(8, "little") + header + np.float32(2.5).tobytes())
    _check_safetensors_bytes(path)
    assert float(load_file(str(path))["w"]) == 2.5
