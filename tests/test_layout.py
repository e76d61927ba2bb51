"""Layout sampler: sizes, placement rules, atomistic layouts and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import ndimage
from skimage.measure import regionprops

from emcopilot.core.errors import InputError
from emcopilot.specimen.layout import Layout, LayoutSpec, sample_layout
from emcopilot.core.recipe import Sample


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different labels that share an edge (4-neighbourhood)."""
    pairs = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (a > 0) & (b > 0) & (a != b)
        pairs |= {tuple(sorted(p)) for p in zip(a[touch].tolist(), b[touch].tolist())}
    return pairs


def test_particle_sizes_follow_the_lognormal_median():
    spec = LayoutSpec("particles", diameter_nm_median=3.0, diameter_sigma_log=0.25,
                      number_density_per_nm2=0.02, touching_fraction=0.0)
    layout = sample_layout(spec, (512, 512), 0.1, np.random.default_rng(1))
    diameters = [r.equivalent_diameter_area * 0.1 for r in regionprops(layout.labels)]
    assert layout.count == len(diameters) == len(layout.diameters_nm)
    assert np.median(diameters) == pytest.approx(3.0, rel=0.1)
    # rasterised equivalent diameters match the drawn ones
    assert np.median(diameters) == pytest.approx(np.median(layout.diameters_nm), rel=0.05)


def test_count_matches_number_density():
    spec = LayoutSpec("particles", 2.0, 0.2, number_density_per_nm2=0.01, touching_fraction=0.0)
    counts = [sample_layout(spec, (400, 400), 0.1, np.random.default_rng(seed)).count for seed in range(5)]
    expected = 0.01 * (400 * 0.1) ** 2  # 16 per frame
    assert np.mean(counts) == pytest.approx(expected, rel=0.25)


def test_no_touching_objects_without_touching_fraction_and_many_with_it():
    base = dict(kind="particles", diameter_nm_median=2.5, diameter_sigma_log=0.2, number_density_per_nm2=0.03)
    apart = sample_layout(LayoutSpec(**base, touching_fraction=0.0), (384, 384), 0.1, np.random.default_rng(2))
    together = sample_layout(LayoutSpec(**base, touching_fraction=0.8), (384, 384), 0.1, np.random.default_rng(2))
    assert _adjacent_pairs(apart.labels) == set()
    assert len(_adjacent_pairs(together.labels)) >= 0.3 * together.count


def test_labels_are_consistent_with_thickness_and_z():
    spec = LayoutSpec("particles", 3.0, 0.2, 0.02, material_z=46, support_z=14)
    layout = sample_layout(spec, (256, 256), 0.1, np.random.default_rng(3))
    inside = layout.labels > 0
    assert set(np.unique(layout.labels)) == set(range(layout.count + 1))
    assert np.all(layout.thickness_nm[~inside] == 0) and np.all(layout.thickness_nm[inside] >= 0)
    assert np.all(layout.z_map[inside] == 46) and np.all(layout.z_map[~inside] == 14)
    # a sphere-like particle is as thick as it is wide at its centre
    assert layout.thickness_nm.max() <= layout.diameters_nm.max() * 1.001
    instances = layout.instances()
    assert instances.count == layout.count and instances.points is None


@settings(max_examples=8, deadline=None)
@given(separation_nm=st.floats(0.15, 0.6), seed=st.integers(0, 1000))
def test_single_atoms_keep_their_minimum_separation(separation_nm, seed):
    spec = LayoutSpec("atoms", 0.28, 0.0, number_density_per_nm2=1.0, atom_min_separation_nm=separation_nm)
    layout = sample_layout(spec, (256, 256), 0.03, np.random.default_rng(seed))
    atoms_nm = layout.atoms * 0.03
    assert len(atoms_nm) > 5
    distances = np.hypot(*(atoms_nm[:, None, :] - atoms_nm[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= separation_nm - 1e-9
    instances = layout.instances()
    assert instances.points.shape == (len(atoms_nm), 2)
    # atom k carries label k + 1 at its centre
    rows, cols = np.round(layout.atoms).astype(int).clip(0, 255).T
    assert np.array_equal(layout.labels[rows, cols], np.arange(1, len(atoms_nm) + 1))


def test_clusters_are_compact_groups_of_atoms():
    spec = LayoutSpec("clusters", 0.8, 0.2, 0.05, cluster_atoms=(3, 50))
    layout = sample_layout(spec, (256, 256), 0.03, np.random.default_rng(5))
    assert layout.count > 3
    sizes = np.bincount(layout.atom_label)[1:]
    assert sizes.min() >= 3 and sizes.max() <= 50
    # every atom sits on a pixel of its own cluster
    rows, cols = np.round(layout.atoms).astype(int).T
    inside = (rows >= 0) & (rows < 256) & (cols >= 0) & (cols < 256)
    assert np.array_equal(layout.labels[rows[inside], cols[inside]], layout.atom_label[inside])
    # nearest neighbours at the bond length (projection can only shorten it)
    first = layout.atoms[layout.atom_label == 1] * 0.03
    gaps = np.hypot(*(first[:, None] - first[None]).transpose(2, 0, 1)) + np.eye(len(first)) * 9
    assert gaps.min(axis=1).max() <= 0.277 + 1e-6


def test_a_cluster_is_one_solid_region_and_neighbours_stay_apart():
    from emcopilot.specimen.layout import cluster_outline, cluster_outlines

    rows, cols = np.mgrid[:64, :64]
    ring = np.zeros((64, 64), bool)  # six atoms round an empty centre, disks of half the spacing
    for angle in np.arange(6) * np.pi / 3:
        ring |= (rows - 32 - 7 * np.sin(angle)) ** 2 + (cols - 32 - 7 * np.cos(angle)) ** 2 <= 3.5 ** 2
    outline = cluster_outline(ring, 3.5)
    assert outline[32, 32] and not ring[32, 32] and (outline >= ring).all()
    assert ndimage.label(outline)[1] == 1 and ndimage.binary_fill_holes(outline).sum() == outline.sum()
    # one maximum of the distance map, not one per atom
    edt = ndimage.distance_transform_edt(outline)
    assert (edt == edt.max()).sum() <= 4 and edt[32, 32] == edt.max()
    two = np.zeros((64, 64), np.int32)
    two[10:20, 10:14], two[10:20, 16:20] = 1, 2  # two clusters 2 px apart are closed each on its own
    closed = cluster_outlines(two, 3.5)
    assert set(np.unique(closed)) == {0, 1, 2} and (closed[two > 0] == two[two > 0]).all()
    assert not (closed[:, 14:16] > 0).any()


def test_support_holes_and_same_seed_same_layout():
    spec = LayoutSpec("particles", 2.0, 0.2, 0.02, support_coverage=0.6)
    first = sample_layout(spec, (256, 256), 0.1, np.random.default_rng(9))
    second = sample_layout(spec, (256, 256), 0.1, np.random.default_rng(9))
    assert np.array_equal(first.labels, second.labels)
    assert first.support.mean() == pytest.approx(0.6, abs=0.02)
    assert np.all(first.z_map[~first.support & (first.labels == 0)] == 0)


def test_outline_bank_shapes_are_used():
    square = np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]], float) / 2
    spec = LayoutSpec("particles", 4.0, 0.0, 0.01, outlines=[square], touching_fraction=0.0)
    layout = sample_layout(spec, (400, 400), 0.1, np.random.default_rng(4))
    regions = [r for r in regionprops(layout.labels) if r.area > 100 and r.label]
    assert regions and min(r.solidity for r in regions) > 0.9
    # farthest pixel / equivalent radius: sqrt(pi/2) = 1.25 for a square, 1 for a disk
    reach = [np.hypot(*(r.coords - r.centroid).T).max() / (r.equivalent_diameter_area / 2) for r in regions]
    assert np.median(reach) > 1.15


def test_from_sample_reads_the_diameter_range_as_a_95_percent_interval():
    sample = Sample.from_dict({"kind": "particles", "diameter_nm": [2.0, 8.0], "material_z": 46})
    spec = LayoutSpec.from_sample(sample, clustering=0.5)
    assert spec.diameter_nm_median == pytest.approx(4.0)
    assert spec.diameter_sigma_log == pytest.approx(math.log(4) / 3.92)
    assert spec.material_z == 46 and spec.clustering == 0.5


def test_redraw_atoms_after_removing_one():
    spec = LayoutSpec("atoms", 0.28, 0.0, 0.5)
    layout = sample_layout(spec, (128, 128), 0.03, np.random.default_rng(0))
    count = len(layout.atoms)
    layout.atoms, layout.atom_z = layout.atoms[1:], layout.atom_z[1:]
    layout.redraw_atoms()
    assert layout.count == count - 1 and len(layout.atom_label) == count - 1


@pytest.mark.parametrize("field, value", [
    ("kind", "blobs"), ("diameter_nm_median", -1.0), ("number_density_per_nm2", float("nan")),
    ("touching_fraction", 1.5), ("material_z", 0), ("aspect_ratio_mean", 0.5), ("cluster_atoms", (5, 2)),
])
def test_bad_specs_name_the_field(field, value):
    values = dict(kind="particles", diameter_nm_median=2.0, diameter_sigma_log=0.2, number_density_per_nm2=0.01)
    values[field] = value
    with pytest.raises(InputError, match=field):
        LayoutSpec(**values)


@pytest.mark.parametrize("pixel_size_nm", [0.0, -0.1, float("nan"), 1e6])
def test_bad_pixel_size(pixel_size_nm):
    spec = LayoutSpec("particles", 2.0, 0.2, 0.01)
    with pytest.raises(InputError, match="pixel_size_nm"):
        sample_layout(spec, (64, 64), pixel_size_nm, np.random.default_rng(0))


def test_absurd_density_is_refused():
    spec = LayoutSpec("atoms", 0.2, 0.0, number_density_per_nm2=1e6)
    with pytest.raises(InputError, match="number_density_per_nm2"):
        sample_layout(spec, (512, 512), 0.5, np.random.default_rng(0))


def test_layout_is_a_plain_dataclass():
    layout = Layout(labels=np.zeros((4, 4), np.int32), thickness_nm=np.zeros((4, 4), np.float32),
                    z_map=np.full((4, 4), 6.0, np.float32), pixel_size_nm=0.1, kind="particles")
    assert layout.count == 0 and layout.shape == (4, 4)
    assert ndimage.sum(layout.labels) == 0
