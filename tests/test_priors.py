"""Prior extractors ``classical`` and ``atoms`` on synthetic micrographs with known objects."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.core.errors import InputError, PluginError
from emcopilot.specimen.morphology import dominant_diameter_px, estimate_pixel_size_nm
from emcopilot.core.plugins import get_registry
from emcopilot.core.recipe import Sample

PARTICLES = Sample.from_dict({"kind": "particles", "diameter_nm": [1.5, 6.0], "working_pixel_size_nm": 0.2})
ATOMS = Sample.from_dict({"kind": "atoms", "diameter_nm": [0.08, 0.2], "working_pixel_size_nm": 0.03})


def disks_image(shape=(256, 256), radius_px=6.0, count=12, contrast=1.0, noise=0.08, seed=0,
                gradient=0.0, blur_px=0.0):
    """Separated bright disks (optionally blurred like a probe would) on a noisy background with an
    optional linear gradient; returns image, centres."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    image = gradient * cols / shape[1] + rng.normal(0, noise, shape)
    centres = []
    while len(centres) < count:
        centre = rng.uniform(2 * radius_px, np.array(shape) - 2 * radius_px)
        if all(np.hypot(*(centre - other)) > 4 * radius_px for other in centres):
            centres.append(centre)
    disks = np.zeros(shape)
    for row, col in centres:
        disks += contrast * (((rows - row) ** 2 + (cols - col) ** 2) <= radius_px ** 2)
    if blur_px:
        from scipy import ndimage
        disks = ndimage.gaussian_filter(disks, blur_px)
    return (image + disks).astype(np.float32), np.array(centres)


def extractor(name, params=None, sample=PARTICLES):
    return get_registry().get("prior_extractor", name).create(params or {}, sample)


def matched(points, centres, radius):
    distances = np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=2)
    return int((distances.min(axis=0) <= radius).sum()) if len(points) else 0


def test_registered_with_nm_params_and_light_imports():
    names = {c.name for c in get_registry().all("prior_extractor")}
    assert {"classical", "atoms", "sam"} <= names
    for name in ("classical", "atoms", "sam"):
        params = get_registry().get("prior_extractor", name).params
        assert params["min_diameter_nm"].unit == "nm" and params["contrast"].choices == ("bright", "dark")


def test_classical_finds_disks_with_their_size_on_a_gradient():
    image, centres = disks_image(gradient=2.0)
    instances = extractor("classical").extract(Micrograph(image, pixel_size_nm=0.2))
    assert instances.labels.shape == image.shape and instances.count == len(centres)
    from emcopilot.analysis.measure import particle_table
    table = particle_table(instances, Micrograph(image, pixel_size_nm=0.2))
    found = table[["y", "x"]].to_numpy()
    assert matched(found, centres, 2.0) == len(centres)
    assert table["eq_diameter_nm"].median() == pytest.approx(12 * 0.2, rel=0.25)  # smoothing + hysteresis grow sharp disks


def test_classical_dark_particles_need_the_dark_polarity():
    image, centres = disks_image(seed=1)
    dark = Micrograph(-image, pixel_size_nm=0.2)
    found = extractor("classical", {"contrast": "dark"}).extract(dark)
    assert found.count == len(centres)
    bright_sample = extractor("classical").extract(dark)  # wrong polarity: rings/background, not the disks
    assert "polarity_warning" in bright_sample.metadata


def test_classical_splits_touching_particles():
    rows, cols = np.mgrid[:128, :128]
    image = np.zeros((128, 128), np.float32)
    for col in (52, 72):  # two disks of radius 10.5 px, centres 20 px apart
        image[((rows - 64) ** 2 + (cols - col) ** 2) <= 10.5 ** 2] = 1.0
    image += np.random.default_rng(2).normal(0, 0.05, image.shape).astype(np.float32)
    instances = extractor("classical").extract(Micrograph(image, pixel_size_nm=0.2))
    assert instances.count == 2


def test_classical_empty_image_gives_no_objects_and_a_warning(caplog):
    image = np.random.default_rng(3).normal(0, 1, (128, 128)).astype(np.float32)
    with caplog.at_level(logging.WARNING):
        instances = extractor("classical", {"threshold": "noise", "min_snr": 6.0}).extract(
            Micrograph(image, pixel_size_nm=0.2))
    assert instances.count == 0 and "no object found" in caplog.text


def test_size_filters_follow_the_nm_range_not_pixels():
    image, _ = disks_image(radius_px=6.0, seed=4)
    from emcopilot.analysis.measure import particle_table
    small = Micrograph(image, pixel_size_nm=0.2)   # disks are 2.4 nm: inside [1.5, 6]
    large = Micrograph(image, pixel_size_nm=1.0)   # disks are 12 nm: outside
    assert extractor("classical").extract(small).count == 12
    table = particle_table(extractor("classical").extract(large), large)
    assert (table["eq_diameter_nm"] <= 6.0).all() and (table["eq_diameter_nm"] >= 1.5).all()
    assert (table["area_px"] < np.pi * 6 ** 2 / 2).all()  # none of the 12 nm disks


def test_uncalibrated_image_gets_a_scale_estimate():
    image, _ = disks_image(radius_px=8.0, count=14, seed=5, blur_px=1.5)
    diameter_px = dominant_diameter_px(image, bright=True)
    assert 10 < diameter_px < 24  # true diameter 16 px
    micrograph = Micrograph(image)
    instances = extractor("classical").extract(micrograph)
    estimate = instances.metadata["pixel_size_nm_estimate"]
    assert estimate == pytest.approx(estimate_pixel_size_nm(micrograph, PARTICLES))
    assert estimate == pytest.approx(3.0 / diameter_px)  # sqrt(1.5 * 6) = 3 nm typical
    assert instances.count == 14


def test_extractors_without_sample_need_explicit_sizes():
    image, _ = disks_image(seed=6)
    with pytest.raises(InputError, match="min_diameter_nm"):
        extractor("classical", sample=None).extract(Micrograph(image, pixel_size_nm=0.2))
    found = extractor("classical", {"min_diameter_nm": 1.5, "max_diameter_nm": 6.0}, sample=None)
    assert found.extract(Micrograph(image, pixel_size_nm=0.2)).count == 12


def test_bad_params_are_refused_before_running():
    with pytest.raises(Exception, match="smoothing_fraction"):
        get_registry().get("prior_extractor", "classical").create({"smoothing_fraction": -1.0}, PARTICLES)
    with pytest.raises(Exception, match="min_diameter_nm"):
        extractor("classical", {"min_diameter_nm": 5.0, "max_diameter_nm": 1.0}).extract(
            Micrograph(np.zeros((64, 64), np.float32), pixel_size_nm=0.2))


def test_nan_pixels_are_an_input_error():
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        extractor("classical").extract(Micrograph(image, pixel_size_nm=0.2))


def test_support_sized_mask_is_dropped_and_reported():
    image = np.zeros((128, 128), np.float32)
    image[10:118, 10:118] = 1.0  # one huge bright region: the support
    image += np.random.default_rng(7).normal(0, 0.02, image.shape).astype(np.float32)
    instances = extractor("classical", {"max_diameter_nm": 100.0, "background_size_factor": 20.0}).extract(
        Micrograph(image, pixel_size_nm=0.2))
    assert instances.count == 0 and instances.metadata["dropped_support"] >= 1


# --------------------------------------------------------------------------- atoms

def atoms_image(seed=0, count=20, sigma_px=1.7, peak=1.0, noise=0.2, shape=(256, 256)):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    # strongly uneven support: a slow bump much brighter than the atoms, plus noise
    image = 4.0 * np.exp(-((rows - 80) ** 2 + (cols - 180) ** 2) / (2 * 60.0 ** 2)) + rng.normal(0, noise, shape)
    centres = []
    while len(centres) < count:
        centre = rng.uniform(8, np.array(shape) - 8)
        if all(np.hypot(*(centre - other)) > 12 for other in centres):
            centres.append(centre)
    for row, col in centres:
        image += peak * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma_px ** 2))
    return image.astype(np.float32), np.array(centres)


def test_atoms_found_on_uneven_support_as_points_and_disks():
    image, centres = atoms_image()
    instances = extractor("atoms", sample=ATOMS).extract(Micrograph(image, pixel_size_nm=0.03))
    assert instances.points.shape[1] == 2 and instances.labels.shape == image.shape
    hits = matched(instances.points, centres, 0.1 / 0.03)
    assert hits >= 18 and len(instances.points) <= 23
    assert instances.labels.max() == len(instances.points)
    assert instances.metadata["pixel_size_nm"] == 0.03


def test_atoms_threshold_is_relative_to_local_noise():
    image, centres = atoms_image(seed=1, peak=0.5)
    strict = extractor("atoms", {"threshold_snr": 12.0}, sample=ATOMS).extract(Micrograph(image, pixel_size_nm=0.03))
    lenient = extractor("atoms", {"threshold_snr": 3.0}, sample=ATOMS).extract(Micrograph(image, pixel_size_nm=0.03))
    assert len(strict.points) < len(lenient.points)


def test_atoms_grouped_into_clusters():
    image = np.random.default_rng(2).normal(0, 0.05, (128, 128)).astype(np.float32)
    rows, cols = np.mgrid[:128, :128]
    cluster = [(40, 40), (40, 48), (47, 44)]       # 3 atoms ~0.24 nm apart
    single = [(100, 100)]
    for row, col in cluster + single:
        image += np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * 1.7 ** 2)).astype(np.float32)
    clusters = Sample.from_dict({"kind": "clusters", "diameter_nm": [0.08, 0.2], "working_pixel_size_nm": 0.03})
    instances = extractor("atoms", sample=clusters).extract(Micrograph(image, pixel_size_nm=0.03))
    assert instances.points is None and instances.labels.max() == 2
    assert sorted(instances.metadata["atoms_per_cluster"]) == [1, 3]


def test_unknown_extractor_lists_what_exists():
    with pytest.raises(PluginError, match="classical"):
        get_registry().get("prior_extractor", "clasical")


def test_instances_are_valid_contract_objects():
    image, _ = disks_image(seed=8)
    instances = extractor("classical").extract(Micrograph(image, pixel_size_nm=0.2))
    assert isinstance(instances, Instances) and instances.labels.dtype == np.int32
    ids = np.unique(instances.labels)
    assert list(ids) == list(range(int(ids.max()) + 1))  # consecutive 0..N
