"""Image-quality metrics: ssim, psnr, lpips (refusal without weights) and the realism gap."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from emcopilot.core.errors import CheckpointError, InputError, PluginError
from emcopilot.core.interfaces import Micrograph
from emcopilot.core.plugins import get_registry
from emcopilot_plugins.metrics.image import LPIPS, PSNR, SSIM, RealismGap, normalise_intensity


def texture(seed: int, size: int = 96, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.normal(size=(size, size)), 3) * 10 + noise * rng.normal(size=(size, size))


def particles(seed: int, size: int = 96) -> np.ndarray:
    """Sparse bright disks on a textured support: a skewed intensity histogram."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    image = texture(seed, size)
    for row, col in rng.integers(5, size - 5, size=(12, 2)):
        image += 40.0 * ((rows - row) ** 2 + (cols - col) ** 2 < 9)
    return image


def metric(name: str, **params):
    return get_registry().get("metric", name).create(params)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    image = texture(0)
    rng = np.random.default_rng(1)
    assert metric("ssim")(image, image)["ssim"] == pytest.approx(1.0)
    slightly = metric("ssim")(image + 0.05 * rng.normal(size=image.shape), image)["ssim"]
    badly = metric("ssim")(image + 0.5 * rng.normal(size=image.shape), image)["ssim"]
    assert 1.0 > slightly > badly


def test_normalised_metrics_ignore_gain_and_offset_raw_ones_do_not():
    image, other = texture(0), texture(1)
    for name, key in (("ssim", "ssim"), ("psnr", "psnr_dB")):
        assert metric(name)(3 * other + 50, image)[key] == pytest.approx(metric(name)(other, image)[key])
        raw = metric(name, normalize=False)
        assert raw(3 * other + 50, image)[key] != pytest.approx(raw(other, image)[key])


def test_psnr_matches_its_definition():
    truth = np.zeros((32, 32))
    truth[0, 0] = 4.0  # data range 4
    prediction = truth + 0.1  # MSE 0.01
    expected = 10 * np.log10(4.0 ** 2 / 0.01)  # PSNR = 10 log10(range^2 / MSE)
    assert PSNR(normalize=False)(prediction, truth)["psnr_dB"] == pytest.approx(expected)
    assert PSNR(normalize=False, data_range=1.0)(prediction, truth)["psnr_dB"] == pytest.approx(20.0)


def test_sequences_give_the_mean_over_pairs_and_accept_micrographs():
    images = [texture(seed) for seed in range(3)]
    noisy = [image + 0.3 * np.random.default_rng(9).normal(size=image.shape) for image in images]
    single = [SSIM()(n, i)["ssim"] for n, i in zip(noisy, images)]
    result = SSIM()([Micrograph(n.astype(np.float32)) for n in noisy], images)
    assert result["ssim"] == pytest.approx(np.mean(single), rel=1e-5) and result["pairs"] == 3


@pytest.mark.parametrize("prediction, truth, message", [
    (np.zeros((8, 9)), np.zeros((8, 8)), "pair 0: prediction is"),
    ([np.zeros((16, 16))] * 2, [np.zeros((16, 16))], "2 predicted images but 1"),
    (np.zeros((4, 4, 4, 4)), np.zeros((16, 16)), "expected an image"),
    (np.full((16, 16), np.nan), np.zeros((16, 16)), "NaN"),
    (np.zeros((8, 8)), np.zeros((8, 8)), "smaller than the SSIM window"),
])
def test_bad_input_is_refused(prediction, truth, message):
    with pytest.raises(InputError, match=message):
        SSIM()(prediction, truth)


def test_lpips_refuses_without_backbone_weights_naming_the_file(tmp_path, monkeypatch):
    pytest.importorskip("torchvision")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(CheckpointError) as error:
        LPIPS()
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "cannot be downloaded" in message and "random" in message
    with pytest.raises(PluginError, match="lpips.*CheckpointError.*vgg16"):
        metric("lpips", net="vgg")


def test_normalise_intensity_maps_percentiles_without_clipping():
    image = np.arange(1000, dtype=float)
    normalised = normalise_intensity(image)
    assert np.percentile(normalised, [1, 99]) == pytest.approx([0, 1])
    assert normalised.min() < 0 and normalised.max() > 1
    assert np.all(normalise_intensity(np.full((4, 4), 7.0)) == 0)


def test_realism_gap_is_zero_for_the_same_set_and_orders_degradations():
    reals = [texture(seed) for seed in range(4)]
    others = [texture(seed) for seed in range(4, 8)]  # same process, other draws
    blurred = [gaussian_filter(image, 2) for image in reals]
    gap = RealismGap()
    same = gap(reals, reals)
    assert same["realism_gap"] == 0.0
    assert set(same) == {"realism_gap", "realism_gap_spectrum", "realism_gap_histogram", "realism_gap_noise"}
    assert gap(others, reals)["realism_gap"] < 0.2 * gap(blurred, reals)["realism_gap"]
    spotted = [particles(seed) for seed in range(4)]
    dark = gap([-particles(seed) for seed in range(4, 8)], spotted)  # dark particles: same spectrum and noise
    bright = gap([particles(seed) for seed in range(4, 8)], spotted)
    assert dark["realism_gap_histogram"] > 3 * bright["realism_gap_histogram"]
    assert dark["realism_gap_spectrum"] == pytest.approx(bright["realism_gap_spectrum"], abs=0.05)


def test_realism_gap_components_respond_to_what_they_measure():
    reals = [texture(seed, noise=0.2) for seed in range(3)]
    quiet = [texture(seed, noise=0.02) for seed in range(3, 6)]
    similar = [texture(seed, noise=0.2) for seed in range(3, 6)]
    gap = RealismGap()
    assert gap(quiet, reals)["realism_gap_noise"] > 5 * gap(similar, reals)["realism_gap_noise"]
    weighted = RealismGap(weight_spectrum=0, weight_histogram=0)(quiet, reals)
    assert weighted["realism_gap"] == pytest.approx(weighted["realism_gap_noise"])


def test_realism_gap_refuses_images_too_small_for_the_spectrum():
    with pytest.raises(InputError, match="at least 64 px"):
        RealismGap()([np.zeros((40, 40))], [texture(0)])
