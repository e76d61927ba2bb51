"""The typical object size of an uncalibrated micrograph: objects, not the support's texture."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from emcopilot.specimen.blob_scale import dominant_diameter_px
from emcopilot.core.errors import InputError

from test_priors import disks_image


def texture(shape, correlation_px, amplitude, seed):
    """A random field of both signs, like carbon-film speckle or support grains."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), correlation_px)
    return amplitude * field / field.std()


def test_dark_particles_on_speckle_are_measured_not_the_speckle():
    # bright-field: 24 px dark particles on a film whose speckle (~5 px) is as strong as the noise allows
    image, _ = disks_image((512, 512), radius_px=12.0, count=14, contrast=1.0, noise=0.05, seed=1, blur_px=1.0)
    image = (1.0 - image + texture(image.shape, 1.5, 0.25, seed=2)).astype(np.float32)
    assert 24 / 1.5 < dominant_diameter_px(image, bright=False) < 24 * 1.5


def test_small_particles_on_large_grains_are_measured_not_the_grains():
    # HAADF: 8 px bright particles on support grains four times their size and brighter than them
    image, _ = disks_image((512, 512), radius_px=4.0, count=60, contrast=0.6, noise=0.05, seed=3, blur_px=0.7)
    image = (image + texture(image.shape, 8.0, 0.5, seed=4)).astype(np.float32)
    assert 8 / 1.5 < dominant_diameter_px(image, bright=True) < 8 * 1.5


def grains(shape, correlation_px, amplitude, seed):
    """Support grains with sharp boundaries: the gaps between them make strong dark blobs at every scale."""
    field = texture(shape, correlation_px, 1.0, seed) > 0
    return amplitude * ndimage.gaussian_filter(field.astype(float), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_many_faint_particles_on_grains_are_found_as_a_population(seed):
    # 120 particles of 7 px, each fainter than the strongest grain gap, on sharp-edged grains:
    # no one of them beats the texture, but there are far more of them than of gaps at their scale
    image, _ = disks_image((768, 768), radius_px=3.5, count=120, contrast=0.3, noise=0.05, seed=10 + seed,
                           blur_px=0.8)
    image = (image + grains(image.shape, 10.0, 0.8, seed=20 + seed)).astype(np.float32)
    assert 8 / 1.3 < dominant_diameter_px(image, bright=True) < 8 * 1.3


def test_particles_cut_by_the_frame_edge_do_not_count_their_edges():
    # bright-field: dark 60 px particles, some cut by the frame edge, whose rims ripple at fine scales
    image = np.ones((512, 512))
    rows, cols = np.mgrid[:512, :512]
    for row, col in [(250, 505), (120, 10), (400, 250), (150, 300), (480, 80)]:
        image -= 0.7 * (((rows - row) ** 2 + (cols - col) ** 2) <= 30 ** 2)
    image = ndimage.gaussian_filter(image, 1.5) + np.random.default_rng(9).normal(0, 0.02, image.shape)
    assert 60 / 1.5 < dominant_diameter_px(image.astype(np.float32), bright=False) < 60 * 1.5


def test_the_estimate_follows_the_scale():
    sizes = []
    for radius_px in (4.0, 8.0, 16.0):
        image, _ = disks_image((512, 512), radius_px=radius_px, count=12, seed=5, blur_px=1.0)
        sizes.append(dominant_diameter_px(image, bright=True))
    ratios = np.array(sizes) / np.array([8.0, 16.0, 32.0])
    assert (ratios > 1 / 1.3).all() and (ratios < 1.3).all(), ratios


def test_atoms_take_the_narrowest_blobs():
    rng = np.random.default_rng(6)
    rows, cols = np.mgrid[:256, :256]
    image = texture((256, 256), 12.0, 0.3, seed=7) + rng.normal(0, 0.05, (256, 256))
    for row, col in rng.uniform(8, 248, (40, 2)):  # Gaussian spots, FWHM 4.7 px, on an uneven support
        image += 0.6 * np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * 2.0 ** 2))
    assert 4.7 / 1.5 < dominant_diameter_px(image.astype(np.float32), bright=True, kind="atoms") < 4.7 * 1.5


def test_texture_alone_has_no_scale():
    image = (texture((256, 256), 3.0, 1.0, seed=8) + 5.0).astype(np.float32)
    with pytest.raises(InputError, match="stands out"):
        dominant_diameter_px(image, bright=True)
    with pytest.raises(InputError, match="too small"):
        dominant_diameter_px(np.zeros((16, 16), np.float32))


def test_resolved_atoms_of_a_cluster_count_as_one_cluster():
    from emcopilot.specimen.blob_scale import cluster_diameters_px

    # two clusters of three atoms (blobs of 4 px, 9 px apart) and one lone atom far away
    centres = np.array([[50, 50], [50, 59], [58, 54], [150, 150], [150, 159], [158, 154], [300, 300]], float)
    diameters = np.full(len(centres), 4.0)
    clusters = np.sort(cluster_diameters_px(diameters, centres))
    assert len(clusters) == 3 and clusters[0] == 4.0
    assert clusters[1:] == pytest.approx([np.hypot(8, 5) + 4.0] * 2)  # Feret extent of the centres plus one atom
