"""The ``unet`` segmenter on toy tasks: learning, tiling, scale, persistence, bad input."""
from __future__ import annotations

import types
import warnings

import numpy as np
from scipy import ndimage
import pytest

torch = pytest.importorskip("torch")

from emcopilot import Instances, Micrograph  # noqa: E402
from emcopilot.core.errors import CheckpointError, EmcopilotError, InputError  # noqa: E402
from emcopilot.analysis.evaluate import match  # noqa: E402
from emcopilot.core.interfaces import TrainBudget  # noqa: E402
from emcopilot.core.plugins import get_registry  # noqa: E402
from emcopilot.core.recipe import Sample  # noqa: E402

PARTICLES = Sample.from_dict({"kind": "particles", "working_pixel_size_nm": 0.1, "diameter_nm": [0.8, 1.5]})
ATOMS = Sample.from_dict({"kind": "atoms", "working_pixel_size_nm": 0.03, "diameter_nm": [0.08, 0.2]})
TINY = {"depth": 2, "width": 8, "tile_px": 64, "tile_overlap_px": 16}


def unet(sample, **params):
    return get_registry().get("segmenter", "unet").create({**TINY, **params}, sample)


def toy_particles(seed: int, size: int = 96, count: int = 8):
    """Non-overlapping bright disks (radius 4-7 px) on a noisy, uneven background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for _ in range(count * 5):
        row, col, radius = rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(4, 7)
        disk = (rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2
        if labels.max() == count or (labels[disk] > 0).any():
            continue
        labels[disk] = labels.max() + 1
    image = 100 + 50 * (labels > 0) + rng.normal(0, 12, labels.shape) + 20 * np.sin(cols / 15)
    return image.astype(np.float32), labels


def toy_atoms(seed: int, size: int = 96, count: int = 15):
    """Gaussian spots (sigma 1.5 px) at least 7 px apart on a noisy, uneven background."""
    rng = np.random.default_rng(seed)
    points: list[np.ndarray] = []
    while len(points) < count:
        candidate = rng.uniform(4, size - 4, 2)
        if all(np.hypot(*(candidate - p)) >= 7 for p in points):
            points.append(candidate)
    points_array = np.array(points)
    rows, cols = np.mgrid[:size, :size]
    image = sum(np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5 ** 2)) for r, c in points_array)
    image = 10 + 5 * image + rng.normal(0, 1.2, image.shape) + 3 * np.sin(rows / 20)
    return image.astype(np.float32), points_array


BUDGET = TrainBudget(steps=200, batch_size=4, crop_px=64, seed=0, progress=False)


@pytest.fixture(scope="module")
def particle_model():
    torch.set_num_threads(1)
    data = [toy_particles(seed) for seed in range(4)]
    segmenter = unet(PARTICLES)
    history = segmenter.fit([d[0] for d in data], [Instances(labels=d[1]) for d in data], None, budget=BUDGET)
    return segmenter, history


@pytest.mark.slow
def test_learns_toy_particles(particle_model):
    segmenter, history = particle_model
    assert history["steps"] == 200 and history["loss"][-1] < history["loss"][0]
    scores = []
    for seed in (100, 101):
        image, labels = toy_particles(seed)
        prediction = segmenter.predict(Micrograph(image, pixel_size_nm=0.1))
        assert prediction.labels.shape == image.shape and prediction.metadata["mode"] == "particles"
        scores.append(match(prediction, Instances(labels=labels)).summary()["f1"])
    assert min(scores) > 0.9, scores


def test_a_frame_that_would_not_fit_in_memory_is_refused_by_name_before_it_is_computed(particle_model,
                                                                                       monkeypatch):
    from emcopilot.core.errors import InputError
    from emcopilot_plugins.segmenters import tiling

    segmenter, _ = particle_model
    image, _ = toy_particles(7)
    tiling.check_memory("x.tif", (8192, 8192), (8192, 8192), available=2**40)  # a terabyte: fits
    monkeypatch.setattr(tiling, "available_memory_bytes", lambda: 1000)  # a kilobyte left
    with pytest.raises(InputError, match=r"big\.tif: segmenting this 96x96 frame .* GiB is available"):
        segmenter.predict(Micrograph(image, pixel_size_nm=0.1, name="big.tif"))
    monkeypatch.setattr(tiling, "available_memory_bytes", lambda: None)  # not known: no check
    assert segmenter.predict(Micrograph(image, pixel_size_nm=0.1)).labels.shape == image.shape


@pytest.mark.slow
def test_learns_toy_atoms():
    torch.set_num_threads(1)
    data = [toy_atoms(seed) for seed in range(4)]
    segmenter = unet(ATOMS)
    segmenter.fit([d[0] for d in data], [Instances(points=d[1]) for d in data], None, budget=BUDGET)
    image, points = toy_atoms(100)
    prediction = segmenter.predict(Micrograph(image, pixel_size_nm=0.03))
    assert prediction.points is not None and prediction.labels.max() == len(prediction.points)
    assert match(prediction, Instances(points=points), radius_px=3).summary()["f1"] > 0.9


def toy_clusters(seed: int, size: int = 112, count: int = 6):
    """Groups of 3-6 Gaussian atoms (sigma 1.3 px, 7 px apart: Pt at 0.04 nm/px) on a noisy background;
    labels are the closed outlines of atom disks of half the atom spacing, as the layout sampler draws
    clusters."""
    from emcopilot.specimen.layout import cluster_outline

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    image = np.zeros((size, size))
    for _ in range(count * 10):
        centre = rng.uniform(14, size - 14, 2)
        atoms = [centre]
        while len(atoms) < rng.integers(3, 7):
            step = rng.normal(size=2)
            candidate = atoms[rng.integers(len(atoms))] + 7 * step / np.hypot(*step)
            if all(np.hypot(*(candidate - a)) >= 6.3 for a in atoms):
                atoms.append(candidate)
        disks = np.zeros((size, size), bool)
        for r, c in atoms:
            disks |= (rows - r) ** 2 + (cols - c) ** 2 <= 3.5 ** 2
        disks = cluster_outline(disks, 3.5)
        grown = ndimage.binary_dilation(disks, iterations=2)
        if labels.max() == count or (labels[grown] > 0).any():
            continue
        labels[disks] = labels.max() + 1
        image += sum(np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.3 ** 2)) for r, c in atoms)
    image = 10 + 6 * image + rng.normal(0, 1.0, image.shape)
    return image.astype(np.float32), labels


def test_a_cluster_outline_is_drawn_round_its_atoms_not_round_the_blur():
    from emcopilot_plugins.segmenters.instances import outlines_from_atoms

    rows, cols = np.mgrid[:80, :80]
    atoms = [(20, 20), (20, 27), (26, 23), (55, 55), (55, 62), (61, 58), (61, 51), (50, 58)]
    image = 10 + sum(8 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5 ** 2)) for r, c in atoms)
    image = image + np.random.default_rng(0).normal(0, 0.3, image.shape)
    blurred = np.zeros((80, 80), np.int32)  # what a network may say: round blobs well past the atoms
    blurred[(rows - 22) ** 2 + (cols - 23) ** 2 <= 12 ** 2] = 1
    blurred[(rows - 56) ** 2 + (cols - 57) ** 2 <= 13 ** 2] = 2
    outlines, count = outlines_from_atoms(image, blurred, sigma_px=1.5, min_distance_px=4, radius_px=3.5,
                                          fraction=0.35)
    assert count.tolist() == [3, 5] and set(np.unique(outlines)) == {0, 1, 2}
    for index, members in ((1, atoms[:3]), (2, atoms[3:])):
        assert all(outlines[r, c] == index for r, c in members)
        assert (outlines == index).sum() < 0.5 * (blurred == index).sum()
    empty = np.zeros((80, 80), np.int32)
    assert outlines_from_atoms(image, empty, sigma_px=1.5, min_distance_px=4, radius_px=3.5,
                               fraction=0.35)[1].tolist() == []


@pytest.mark.slow
def test_clusters_are_outlined_one_object_each():
    torch.set_num_threads(1)
    clusters = Sample.from_dict({"kind": "clusters", "working_pixel_size_nm": 0.04, "diameter_nm": [0.2, 1.0]})
    segmenter = unet(clusters)
    assert segmenter.mode == "particles" and segmenter.outputs == ("foreground", "distance")
    data = [toy_clusters(seed) for seed in range(4)]
    segmenter.fit([d[0] for d in data], [Instances(labels=d[1]) for d in data], None, budget=BUDGET)
    image, labels = toy_clusters(100)
    prediction = segmenter.predict(Micrograph(image, pixel_size_nm=0.04))
    assert prediction.points is None  # a cluster is a region, not a set of atom points
    assert match(prediction, Instances(labels=labels), iou_threshold=0.5).summary()["f1"] > 0.8


def test_tiled_and_untiled_agree_on_a_frame_that_fits_one_tile(particle_model):
    segmenter, _ = particle_model
    image, _ = toy_particles(7, size=128)
    from emcopilot_plugins.segmenters.unet import normalise

    normalised = normalise(image, [1.0, 99.5], False)
    segmenter.params.update(tile_px=256)
    whole = segmenter.predict_maps(normalised)
    assert segmenter.last_tiles == 1
    segmenter.params.update(tile_px=64, tile_overlap_px=32)
    tiled = segmenter.predict_maps(normalised)
    segmenter.params.update(TINY)
    assert segmenter.last_tiles == 9
    assert np.abs(whole - tiled).mean() < 0.002 and np.abs(whole - tiled).max() < 0.05
    assert np.mean((whole[0] > 0.5) == (tiled[0] > 0.5)) > 0.999


def test_the_inference_network_computes_what_the_trained_one_does(particle_model):
    import torch
    from emcopilot_plugins.segmenters.unet import inference_network

    segmenter, _ = particle_model
    net = segmenter.net.eval()
    fused = inference_network(net, torch.device("cpu"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in segmenter.net.modules())  # left as it was
    x = torch.randn(2, 1, 64, 96)
    with torch.inference_mode():
        assert torch.allclose(fused(x.contiguous(memory_format=torch.channels_last)), net(x), atol=1e-4)


@pytest.mark.parametrize("length, tiles, side", [(1024, 3, 368), (2048, 5, 440), (200, 1, 200), (512, 1, 512)])
def test_tiles_cover_a_side_with_little_computed_twice(length, tiles, side):
    from emcopilot_plugins.segmenters.tiling import tile_starts, tile_side

    found = tile_side(length, 512, 32, 8)
    assert found == side and found % 8 == 0 and found <= 512
    assert len(tile_starts(length, found, found - 32)) == tiles


def test_the_background_is_smoothed_at_low_resolution_as_at_full():
    from emcopilot_plugins.segmenters.unet import smooth_background

    rng = np.random.default_rng(0)
    image = (ndimage.gaussian_filter(rng.normal(size=(333, 517)), 30) * 50 + rng.normal(size=(333, 517)))
    image = image.astype(np.float32)
    full = ndimage.gaussian_filter(image, 50.0, mode="reflect")
    fast = smooth_background(image, 50.0)
    assert fast.shape == image.shape and fast.dtype == np.float32
    assert np.abs(fast - full).max() < 0.02  # the noise is 1, the background's spread 2
    assert np.array_equal(smooth_background(image, 3.0), ndimage.gaussian_filter(image, 3.0, mode="reflect"))


def test_averaging_over_all_eight_symmetries_makes_the_prediction_turn_with_the_image(particle_model):
    segmenter, _ = particle_model
    image, _ = toy_particles(5, size=64)
    from emcopilot_plugins.segmenters.unet import normalise

    normalised = normalise(image, [1.0, 99.5], False)
    turned = np.ascontiguousarray(np.rot90(normalised))
    single, averaged = [], []
    for flips, out in ((1, single), (8, averaged)):
        segmenter.params.update(test_time_flips=flips)
        out.extend([segmenter.predict_maps(normalised), segmenter.predict_maps(turned)])
    segmenter.params.update(test_time_flips=1)
    assert np.abs(np.rot90(averaged[0], axes=(1, 2)) - averaged[1]).max() < 1e-4
    assert np.abs(np.rot90(single[0], axes=(1, 2)) - single[1]).max() > 1e-3  # a plain CNN is not equivariant
    # the average stays a probability map close to the single pass
    assert averaged[0].min() >= 0 and averaged[0].max() <= 1
    assert np.mean((averaged[0][0] > 0.5) == (single[0][0] > 0.5)) > 0.95


def test_resamples_to_the_working_pixel_size_and_maps_back(particle_model):
    segmenter, _ = particle_model
    image, labels = toy_particles(100)
    # the same scene recorded at 0.05 nm/px: twice as many pixels
    fine_image = np.kron(image, np.ones((2, 2), np.float32))
    fine_labels = np.kron(labels, np.ones((2, 2), np.int32))
    prediction = segmenter.predict(Micrograph(fine_image, pixel_size_nm=0.05))
    assert prediction.labels.shape == fine_image.shape
    assert prediction.metadata["scale_factor"] == pytest.approx(0.5)
    assert match(prediction, Instances(labels=fine_labels)).summary()["f1"] > 0.9


def test_uncalibrated_image_warns_once_and_is_recorded(particle_model):
    segmenter, _ = particle_model
    segmenter._warned_uncalibrated = False
    image, _ = toy_particles(3)
    with pytest.warns(UserWarning, match="no pixel size"):
        first = segmenter.predict(Micrograph(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        segmenter.predict(Micrograph(image))
    assert first.metadata["calibrated"] is False and first.metadata["scale_factor"] == 1.0


def test_frames_smaller_than_a_tile_and_odd_shapes(particle_model):
    segmenter, _ = particle_model
    for shape in ((13, 200), (70, 33), (5, 5)):
        image = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32)
        assert segmenter.predict(Micrograph(image, pixel_size_nm=0.1)).labels.shape == shape


def test_non_finite_pixels_are_refused(particle_model):
    segmenter, _ = particle_model
    image, _ = toy_particles(3)
    image[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        segmenter.predict(Micrograph(image, pixel_size_nm=0.1))


def test_save_load_round_trip_and_refusals(particle_model, tmp_path):
    segmenter, _ = particle_model
    segmenter.save(tmp_path / "model")
    restored = unet(PARTICLES)
    restored.load(tmp_path / "model")
    image, _ = toy_particles(5)
    micrograph = Micrograph(image, pixel_size_nm=0.1)
    np.testing.assert_array_equal(restored.predict(micrograph).labels, segmenter.predict(micrograph).labels)
    with pytest.raises(CheckpointError, match="width: stored 8, expected 16"):
        unet(PARTICLES, width=16).load(tmp_path / "model")
    with pytest.raises(CheckpointError, match="mode: stored 'particles', expected 'atoms'"):
        unet(ATOMS).load(tmp_path / "model")
    torch.save(segmenter.net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        restored.load(tmp_path / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unet(PARTICLES).load(tmp_path / "model")  # the same settings: nothing to say
    overridden = unet(PARTICLES, background_nm=5.0)
    with pytest.warns(UserWarning, match="background_nm, normalise_percentiles and invert_dark_objects are fixed"):
        overridden.load(tmp_path / "model")
    assert overridden.normalisation == restored.normalisation  # the training's normalisation is used


def test_untrained_segmenter_refuses_to_predict():
    with pytest.raises(EmcopilotError, match="no weights"):
        unet(PARTICLES).predict(Micrograph(np.zeros((8, 8), np.float32)))


def test_training_is_deterministic_with_the_seed():
    torch.set_num_threads(1)
    image, labels = toy_particles(0, size=64)
    budget = TrainBudget(steps=3, batch_size=2, crop_px=32, seed=5, progress=False)
    states = []
    for _ in range(2):
        segmenter = unet(PARTICLES)
        segmenter.fit([image], [Instances(labels=labels)], None, budget=budget)
        states.append(segmenter.net.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_a_wall_time_budget_stops_training_early_with_the_rate_annealed(monkeypatch):
    from emcopilot_plugins.segmenters import unet as unet_module

    assert unet_module._cosine_lr(1.0, 0.0) == 1.0 and unet_module._cosine_lr(1.0, 1.0) == pytest.approx(0.1)
    assert TrainBudget(steps=10).fraction_done(5, 1.0) == 0.5
    assert TrainBudget(steps=10, max_minutes=40 / 60).fraction_done(5, 30.0) == 0.75  # the clock binds first
    clock = iter(range(0, 10_000, 20))  # each reading of the clock is 20 s later: 3 steps fit in a minute
    monkeypatch.setattr(unet_module, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    image, labels = toy_particles(0, size=64)
    rates = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: rates.append(self.param_groups[0]["lr"]))
    budget = TrainBudget(steps=1000, batch_size=2, crop_px=32, seed=0, progress=False, max_minutes=1.0)
    history = unet(PARTICLES, learning_rate=1e-3).fit([image], [Instances(labels=labels)], None, budget=budget)
    assert history["steps"] == len(rates) < 1000 and "max_minutes 1.0" in history["stopped_early"]
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.5e-3  # annealed by time, not by step count


def test_a_cap_that_will_not_bind_leaves_the_schedule_to_the_steps():
    # a slow first step (warm-up), then 0.1 s a step: the 100 steps fit well inside the minute, so
    # the learning rate follows the steps exactly, as without a cap, however the clock jitters
    fits = TrainBudget(steps=100, max_minutes=1.0).schedule()
    assert [fits.done(s, 2.0 + 0.1 * s) for s in range(100)] == [s / 100 for s in range(100)]
    assert fits.by_time_from is None
    # 1 s a step: 100 steps would take 100 s; once the pace shows it, training anneals over the minute
    slow = TrainBudget(steps=100, max_minutes=1.0).schedule()
    done = [slow.done(s, 1.0 * s) for s in range(100)]
    assert slow.by_time_from is not None and done[30] == 0.5 and done[99] == 1.0
    assert done == sorted(done)


def test_fit_names_bad_training_pairs():
    image, labels = toy_particles(0, size=32)
    budget = TrainBudget(steps=1, batch_size=1, crop_px=32, progress=False)
    with pytest.raises(InputError, match="as many label sets as images"):
        unet(PARTICLES).fit([image], [], None, budget=budget)
    with pytest.raises(InputError, match="points only"):
        unet(PARTICLES).fit([image], [Instances(points=[[1, 1]])], None, budget=budget)
    with pytest.raises(InputError, match=r"labels \(16, 16\) differ from image \(32, 32\)"):
        unet(PARTICLES).fit([image], [Instances(labels=labels[:16, :16])], None, budget=budget)


def test_watershed_seeds_split_touching_particles_but_not_a_rippled_one():
    from emcopilot_plugins.segmenters.instances import particle_targets, particles_from_maps

    rows, cols = np.mgrid[:64, :96]
    touching = np.zeros((64, 96), np.int32)
    touching[(rows - 32) ** 2 + (cols - 30) ** 2 <= 15 ** 2] = 1
    touching[(rows - 32) ** 2 + (cols - 58) ** 2 <= 14 ** 2] = 2  # overlaps the first: they touch
    foreground, distance = particle_targets(touching)
    labels, scores = particles_from_maps(foreground, distance, foreground_threshold=0.5, seed_dynamic=0.2,
                                         min_area_px=10)
    assert labels.max() == 2 and len(scores) == 2
    assert np.mean(labels[touching > 0] == np.where(touching == 1, 1, 2)[touching > 0]) > 0.95
    # one particle whose predicted distance ripples (two shallow humps) and a small one predicted low
    single = ((rows - 32) ** 2 + (cols - 30) ** 2 <= 15 ** 2).astype(np.int32)
    single[(rows - 32) ** 2 + (cols - 75) ** 2 <= 4 ** 2] = 2
    foreground, distance = particle_targets(single)
    rippled = distance * (1 - 0.25 * np.cos((cols - 30) / 1.6) ** 2)  # humps 0.84, dip 0.75 between
    rippled[single == 2] *= 0.4
    labels, _ = particles_from_maps(foreground, rippled, foreground_threshold=0.5, seed_dynamic=0.2, min_area_px=10)
    assert labels.max() == 2
    # a fixed level on the same map splits the rippled particle
    fixed, _ = particles_from_maps(foreground, rippled, foreground_threshold=0.5, seed_dynamic=0.0,
                                   seed_threshold=0.8, min_area_px=1)
    assert fixed.max() > 2


def test_seed_maxima_found_blob_by_blob_equal_those_of_the_whole_frame():
    from scipy import ndimage
    from skimage.morphology import local_maxima, reconstruction
    from emcopilot_plugins.segmenters.instances import _seeds

    rng = np.random.default_rng(3)
    rows, cols = np.mgrid[:120, :160]
    distance = np.zeros((120, 160))
    for _ in range(25):  # overlapping bumps make blobs with several maxima, some at the frame's edge
        r, c, s = rng.uniform(0, 120), rng.uniform(0, 160), rng.uniform(3, 9)
        distance = np.maximum(distance, rng.uniform(0.3, 1) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * s * s)))
    distance += rng.normal(0, 0.02, distance.shape)
    mask = distance > 0.15
    inside = np.where(mask, distance, 0.0)
    for dynamic in (0.05, 0.1, 0.2):
        whole = local_maxima(reconstruction(inside - dynamic, inside, method="dilation"), connectivity=2) & mask
        blobs, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        assert np.array_equal(_seeds(inside, blobs, ndimage.find_objects(blobs), dynamic, 0.0), whole)


def _bumps(seed: int, shape=(120, 160), count=25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    distance = np.zeros(shape)
    for _ in range(count):  # overlapping bumps: blobs with several maxima, some at the frame's edge
        r, c, s = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 9)
        distance = np.maximum(distance, rng.uniform(0.3, 1) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * s * s)))
    return np.clip(distance + rng.normal(0, 0.02, shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("dynamic", [0.0, 0.1])
def test_particles_flooded_blob_by_blob_are_those_of_one_whole_frame_flood(dynamic):
    """The watershed runs in each foreground blob's box, the growth in tiles (memory that follows the
    largest blob and the tile, not the frame): the labels, ids and scores of one flood of the frame."""
    from scipy import ndimage
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import expand_labels, relabel_sequential, watershed

    from emcopilot_plugins.segmenters.instances import particles_from_maps

    distance = _bumps(5, (150, 170), 40)
    foreground = np.clip(1.6 * distance, 0, 1)
    mask = foreground >= 0.25
    inside = np.where(mask, distance, 0).astype(np.float64)
    seeds = (local_maxima(reconstruction(inside - dynamic, inside, method="dilation"), connectivity=2)
             if dynamic else inside > 0) & mask
    markers, _ = ndimage.label(seeds, structure=np.ones((3, 3)))
    whole = watershed(-inside, markers, mask=mask)
    orphans, _ = ndimage.label(mask & (whole == 0))
    whole = np.where(orphans > 0, orphans + whole.max(), whole).astype(np.int32)
    means = ndimage.mean(foreground, whole, np.arange(1, whole.max() + 1))
    areas = np.bincount(whole.ravel())[1:]
    keep = np.concatenate([[False], (areas >= 12) & (means >= 0.4)])
    whole[~keep[whole]] = 0
    whole = expand_labels(relabel_sequential(whole)[0], 1.5)

    labels, scores = particles_from_maps(foreground, distance, foreground_threshold=0.25, seed_dynamic=dynamic,
                                         min_area_px=12, grow_px=1.5, min_score=0.4)
    assert labels.max() > 10 and labels.dtype == np.int32
    assert np.array_equal(labels, whole)
    np.testing.assert_array_equal(scores, means[keep[1:]].astype(np.float32))


@pytest.mark.parametrize("tile_px", [7, 16, 64, 500])
def test_labels_grown_tile_by_tile_are_those_grown_at_once(tile_px):
    from skimage.segmentation import expand_labels

    from emcopilot_plugins.segmenters.instances import expand_labels_tiled

    rng = np.random.default_rng(tile_px)
    labels = np.zeros((90, 130), np.int32)
    for index in range(1, 60):  # small objects, some touching, some at the edges
        r, c = rng.integers(0, 90), rng.integers(0, 130)
        labels[max(0, r - 1):r + 2, max(0, c - 2):c + 2] = index
    for distance in (1.0, 2.5, 4.0):
        assert np.array_equal(expand_labels_tiled(labels, distance, tile_px), expand_labels(labels, distance))


def test_grown_particles_reach_outward_without_merging_and_keep_their_scores():
    from emcopilot_plugins.segmenters.instances import particle_targets, particles_from_maps

    rows, cols = np.mgrid[:64, :96]
    truth = np.zeros((64, 96), np.int32)
    truth[(rows - 32) ** 2 + (cols - 30) ** 2 <= 12 ** 2] = 1
    truth[(rows - 32) ** 2 + (cols - 56) ** 2 <= 12 ** 2] = 2  # 2 px apart
    foreground, distance = particle_targets(truth)
    plain, scores = particles_from_maps(foreground, distance, foreground_threshold=0.5, seed_dynamic=0.2,
                                        min_area_px=10)
    grown, grown_scores = particles_from_maps(foreground, distance, foreground_threshold=0.5, seed_dynamic=0.2,
                                              min_area_px=10, grow_px=2)
    assert grown.max() == plain.max() == 2
    np.testing.assert_array_equal(grown_scores, scores)
    for index in (1, 2):
        assert np.all(grown[plain == index] == index)  # every pixel it had, and more
        assert (grown == index).sum() > (plain == index).sum() * 1.2
    # the gap between them is shared out, not bridged: each pixel belongs to one particle
    assert set(np.unique(grown[32, 42:45])) <= {1, 2}


def test_particles_the_network_is_unsure_of_are_dropped_by_min_score():
    from emcopilot_plugins.segmenters.instances import particle_targets, particles_from_maps

    rows, cols = np.mgrid[:64, :96]
    truth = np.zeros((64, 96), np.int32)
    truth[(rows - 32) ** 2 + (cols - 24) ** 2 <= 10 ** 2] = 1
    truth[(rows - 32) ** 2 + (cols - 70) ** 2 <= 10 ** 2] = 2
    foreground, distance = particle_targets(truth)
    foreground = foreground * np.where(cols < 48, 0.9, 0.4)  # the right one only faintly foreground
    both, scores = particles_from_maps(foreground, distance, foreground_threshold=0.3, seed_dynamic=0.2,
                                       min_area_px=10)
    assert both.max() == 2 and np.allclose(sorted(scores), [0.4, 0.9])
    sure, sure_scores = particles_from_maps(foreground, distance, foreground_threshold=0.3, seed_dynamic=0.2,
                                            min_area_px=10, min_score=0.5)
    assert sure.max() == 1 and np.all(sure[truth == 1] == 1) and not sure[truth == 2].any()
    np.testing.assert_allclose(sure_scores, [0.9])


def test_the_training_bar_counts_time_when_the_cap_binds():
    bar = TrainBudget(steps=100, max_minutes=1.0).progress_bar("unet")
    bar.advance(5, 30.0)
    assert bar.bar.n == pytest.approx(50)  # half the minute, though only 5 % of the steps
    bar.advance(10, 60.0)
    assert bar.bar.n == pytest.approx(100) and "step 10" in str(bar.bar)
    bar.close()
    silent = TrainBudget(steps=10, progress=False).progress_bar("unet")
    silent.advance(1, 1.0)
    assert silent.bar is None
    silent.close()


def test_pixels_left_out_of_the_self_training_loss_do_not_move_it():
    torch.manual_seed(0)
    segmenter = unet(PARTICLES)
    logits, targets = torch.randn(2, 2, 16, 16), (torch.rand(2, 2, 16, 16) > 0.5).float()
    weight = torch.ones(2, 16, 16)
    weight[:, :8] = 0
    changed = logits.clone()
    changed[:, :, :8] = torch.randn(2, 2, 8, 16) * 5
    assert segmenter._loss(logits, targets, weight) == pytest.approx(float(segmenter._loss(changed, targets, weight)))
    assert segmenter._loss(logits, targets, torch.ones(2, 16, 16)) == pytest.approx(
        float(segmenter._loss(logits, targets)))  # all pixels kept: the ordinary loss


def test_self_training_fine_tunes_on_the_real_images_and_is_off_by_default():
    torch.set_num_threads(1)
    synthetic = [toy_particles(seed) for seed in range(2)]
    real = [toy_particles(seed)[0] * 1.3 + 40 for seed in (50, 51)]  # another gain and offset
    budget = TrainBudget(steps=40, batch_size=4, crop_px=64, seed=0, progress=False)
    off = unet(PARTICLES)
    off.fit([d[0] for d in synthetic], [Instances(labels=d[1]) for d in synthetic], None, budget=budget)
    assert off.adapt(real, None, budget=budget) is None  # self_training defaults to 0
    on = unet(PARTICLES, self_training=0.5)
    on.fit([d[0] for d in synthetic], [Instances(labels=d[1]) for d in synthetic], None, budget=budget)
    assert all(torch.equal(a, b) for a, b in zip(off.net.state_dict().values(), on.net.state_dict().values()))
    history = on.adapt(real, None, budget=budget)
    assert history["steps"] == history["planned_steps"] == 20 and history["images"] == 2
    assert 0 < history["used_pixel_share"] <= 1
    assert any(not torch.equal(a, b) for a, b in zip(off.net.state_dict().values(), on.net.state_dict().values()))
    with pytest.raises(EmcopilotError, match="call fit"):
        unet(PARTICLES, self_training=0.5).adapt(real, None, budget=budget)


def test_a_second_pass_adds_only_the_objects_that_overlap_none_found_before():
    from emcopilot_plugins.segmenters.instances import add_unmatched

    base = np.zeros((40, 40), np.int32)
    base[2:10, 2:10], base[20:28, 20:28] = 1, 2
    extra = np.zeros_like(base)
    extra[3:11, 3:11] = 1      # the first object again, shifted by a pixel: not added
    extra[2:10, 30:38] = 2     # new
    extra[26:34, 26:34] = 3    # touches object 2 (box IoU 4/124): added, on the pixels that are free
    labels, scores, added = add_unmatched(base, np.array([0.9, 0.8]), extra, np.array([0.5, 0.6, 0.7]))
    assert added == 2
    np.testing.assert_array_equal(np.where(labels <= 2, labels, 0), base)
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert (labels[2:10, 30:38] == 3).all() and labels[26:28, 26:28].tolist() == [[2, 2], [2, 2]]
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.6, 0.7])
    # nothing new, or nothing found before
    assert add_unmatched(base, np.array([0.9, 0.8]), np.zeros_like(base), np.zeros(0))[2] == 0
    labels, scores, added = add_unmatched(np.zeros_like(base), np.zeros(0), extra, np.array([0.5, 0.6, 0.7]))
    assert added == 3 and labels.max() == 3 and scores.tolist() == pytest.approx([0.5, 0.6, 0.7])


def test_a_coarser_pass_adds_the_particles_too_large_for_the_first(monkeypatch):
    from skimage.measure import label as connected
    from emcopilot_plugins.segmenters.instances import particle_targets

    rows, cols = np.mgrid[:200, :200]
    truth = np.zeros((200, 200), np.int32)
    for row, col, radius in [(20, 20, 5), (20, 60, 5), (60, 20, 5), (60, 60, 5), (130, 50, 18), (60, 140, 18)]:
        truth[(rows - row) ** 2 + (cols - col) ** 2 <= radius ** 2] = truth.max() + 1
    image = (100 + 50 * (truth > 0)).astype(np.float32)

    def network_blind_to_large_objects(normalised):
        """Sharp maps of the bright disks, except those over 200 working px (a network sees them as support)."""
        blobs = connected(normalised > 0.5)
        blobs[np.isin(blobs, np.flatnonzero(np.bincount(blobs.ravel()) > 200))] = 0
        return np.stack(particle_targets(blobs))

    segmenter = unet(PARTICLES, rescan_scales=[0.4], min_score=0.0)
    segmenter.trained, segmenter.last_tiles = True, 1
    monkeypatch.setattr(segmenter, "predict_maps", network_blind_to_large_objects)
    micrograph = Micrograph(image, pixel_size_nm=0.1)
    twice = segmenter.predict(micrograph)
    segmenter.params["rescan_scales"] = []
    once = segmenter.predict(micrograph)
    assert once.labels.max() == 4 and twice.metadata["rescan_added"] == {"0.4": 2}
    np.testing.assert_array_equal(twice.labels[once.labels > 0], once.labels[once.labels > 0])
    summary = match(twice, Instances(labels=truth)).summary()
    assert summary["f1"] == 1.0 and len(twice.scores) == 6
    large = np.bincount(twice.labels.ravel())[5:]  # measured on the micrograph's own grid
    np.testing.assert_allclose(large, np.pi * 18 ** 2, rtol=0.15)


@pytest.mark.parametrize("factors", [[1.0], [0.0], [0.6, 20.0]])
def test_rescan_factors_that_mean_nothing_are_refused(factors):
    with pytest.raises(EmcopilotError, match="rescan_scales must be factors"):
        unet(PARTICLES, rescan_scales=factors)


def test_rescanning_is_refused_for_single_atoms():
    with pytest.raises(EmcopilotError, match="rescan_scales applies to particles and clusters"):
        unet(ATOMS, rescan_scales=[0.7])
