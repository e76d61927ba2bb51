"""MorphologyPrior: fit recovers known distributions, JSON round trip, layout sampling."""
from __future__ import annotations

import math

import numpy as np
import pytest

from emcopilot import Instances, Micrograph
from emcopilot.core.errors import InputError
from emcopilot.specimen.morphology import MorphologyPrior, normalised_outline
from emcopilot.core.recipe import Sample

SAMPLE = Sample.from_dict({"kind": "particles", "diameter_nm": [1.0, 8.0], "working_pixel_size_nm": 0.2,
                           "material_z": 46, "support_z": 14})


def ellipses(seed=0, count=30, shape=(400, 400), pixel_size_nm=0.2, median_nm=3.0, sigma_log=0.25, aspect=1.5):
    """Separate ellipses with lognormal equivalent diameters; image brighter inside."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    diameters = np.exp(rng.normal(math.log(median_nm), sigma_log, count)) / pixel_size_nm
    placed = 0
    for diameter in diameters:
        for _ in range(200):
            centre = rng.uniform(diameter, np.array(shape) - diameter)
            semi_minor = diameter / 2 / math.sqrt(aspect)
            semi_major = semi_minor * aspect
            angle = rng.uniform(0, math.pi)
            u = (rows - centre[0]) * math.cos(angle) + (cols - centre[1]) * math.sin(angle)
            v = -(rows - centre[0]) * math.sin(angle) + (cols - centre[1]) * math.cos(angle)
            inside = (u / semi_major) ** 2 + (v / semi_minor) ** 2 <= 1
            if not (labels[inside] > 0).any() and not _near(labels, inside):
                placed += 1
                labels[inside] = placed
                break
    image = np.where(labels > 0, 3.0, 1.0).astype(np.float32)
    return labels, image


def _near(labels, inside):
    from scipy import ndimage
    return (labels[ndimage.binary_dilation(inside, iterations=2)] > 0).any()


def test_fit_recovers_size_shape_density_and_contrast():
    labels, image = ellipses()
    micrograph = Micrograph(image, pixel_size_nm=0.2)
    prior = MorphologyPrior.fit([Instances(labels=labels)], [micrograph], sample=SAMPLE)
    assert prior.count == labels.max() >= 25
    assert prior.diameter_nm_median == pytest.approx(3.0, rel=0.12)
    assert prior.diameter_sigma_log == pytest.approx(0.25, abs=0.08)
    assert prior.aspect_ratio_mean == pytest.approx(1.5, rel=0.12)
    assert prior.number_density_per_nm2 == pytest.approx(prior.count / (400 * 400 * 0.04))
    assert prior.contrast_mean == pytest.approx(2.0, rel=0.01)  # 3 / 1 - 1
    assert prior.touching_fraction == 0.0
    assert (prior.material_z, prior.support_z) == (46, 14)
    assert 0 < len(prior.outlines) <= 64


def test_outlines_are_centred_unit_diameter():
    rows, cols = np.mgrid[:41, :41]
    disk = ((rows - 20) ** 2 + (cols - 20) ** 2) <= 15 ** 2
    outline = normalised_outline(disk)
    assert outline.shape == (64, 2)
    assert np.abs(outline.mean(axis=0)).max() < 1e-6
    assert np.hypot(outline[:, 0], outline[:, 1]).mean() == pytest.approx(0.5, rel=0.05)


def test_json_round_trip_and_bad_json():
    labels, image = ellipses(seed=1)
    prior = MorphologyPrior.fit([Instances(labels=labels)], [Micrograph(image, pixel_size_nm=0.2)], sample=SAMPLE)
    again = MorphologyPrior.from_json(prior.to_json())
    assert again == prior
    with pytest.raises(InputError, match="not valid JSON"):
        MorphologyPrior.from_json("{")
    with pytest.raises(InputError, match="morphology_prior"):
        MorphologyPrior.from_json('{"kind": "particles"}')


def test_uncalibrated_uses_the_extractor_estimate():
    labels, image = ellipses(seed=2)
    instances = Instances(labels=labels, metadata={"pixel_size_nm_estimate": 0.4})
    prior = MorphologyPrior.fit([instances], [Micrograph(image)], sample=SAMPLE)
    calibrated = MorphologyPrior.fit([Instances(labels=labels)], [Micrograph(image, pixel_size_nm=0.2)],
                                     sample=SAMPLE)
    assert prior.diameter_nm_median == pytest.approx(2 * calibrated.diameter_nm_median)
    assert prior.pixel_sizes_nm == [0.4]


def test_nothing_found_falls_back_to_the_sample_or_fails():
    empty = [Instances(labels=np.zeros((64, 64), np.int32))]
    micrographs = [Micrograph(np.ones((64, 64), np.float32), pixel_size_nm=0.2)]
    prior = MorphologyPrior.fit(empty, micrographs, sample=SAMPLE)
    assert prior.count == 0 and prior.diameter_nm_median == pytest.approx(math.sqrt(8.0))
    with pytest.raises(InputError, match="fewer than two objects"):
        MorphologyPrior.fit(empty, micrographs, sample=None)


def test_points_count_towards_density_and_separation():
    points = np.array([[10.0, 10.0], [10.0, 20.0], [40.0, 40.0]])
    atoms = Sample.from_dict({"kind": "atoms", "diameter_nm": [0.08, 0.2], "working_pixel_size_nm": 0.03})
    prior = MorphologyPrior.fit([Instances(points=points)], [Micrograph(np.ones((50, 50)), pixel_size_nm=0.03)],
                                sample=atoms)
    assert prior.kind == "atoms" and prior.count == 3
    assert prior.number_density_per_nm2 == pytest.approx(3 / (50 * 50 * 0.03 ** 2))
    assert 0.2 < prior.atom_min_separation_nm < 0.35


def test_layout_spec_and_sample_draw_from_the_prior():
    pytest.importorskip("emcopilot.specimen.layout")
    labels, image = ellipses(seed=3)
    prior = MorphologyPrior.fit([Instances(labels=labels)], [Micrograph(image, pixel_size_nm=0.2)], sample=SAMPLE)
    spec = prior.layout_spec()
    assert spec.kind == "particles" and spec.diameter_nm_median == prior.diameter_nm_median
    assert spec.outlines and spec.number_density_per_nm2 == prior.number_density_per_nm2
    layout = prior.sample((256, 256), 0.2, np.random.default_rng(0))
    assert layout.labels.shape == (256, 256) and layout.labels.max() >= 3
    from skimage.measure import regionprops
    drawn = np.median([r.equivalent_diameter_area * 0.2 for r in regionprops(layout.labels)])
    assert drawn == pytest.approx(prior.diameter_nm_median, rel=0.35)
    again = prior.sample((256, 256), 0.2, np.random.default_rng(0))
    assert (again.labels == layout.labels).all()


def test_density_counts_support_area_not_vacuum():
    from emcopilot.specimen.morphology import support_fraction

    labels, image = ellipses(seed=2)
    labels[:, 200:] = 0
    image = image.copy()
    image[:, 200:] = 0.05  # vacuum: the right half of the frame holds no specimen
    assert support_fraction(image) == pytest.approx(0.5, abs=0.05)
    assert support_fraction(np.where(labels > 0, 3.0, 1.0)) == 1.0  # support everywhere
    assert support_fraction(2.0 - image, dark_objects=True) == pytest.approx(0.5, abs=0.05)  # BF: vacuum bright
    prior = MorphologyPrior.fit([Instances(labels=labels)], [Micrograph(image, pixel_size_nm=0.2)], sample=SAMPLE)
    count = len(np.unique(labels[labels > 0]))
    assert prior.number_density_per_nm2 == pytest.approx(count / (400 * 200 * 0.04), rel=0.1)
