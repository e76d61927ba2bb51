"""The ``unet`` segmenter: a small U-Net, its training, and tiled inference.

Particle mode (``sample.kind`` ``"particles"`` or ``"clusters"``): two outputs,
foreground and a per-object distance map normalised to 1 at the centre;
instances by marker watershed from the distance map's maxima of enough dynamic
(h-maxima). A sub-nm cluster is one object, like a particle: its atoms' disks
with the gaps closed, in the priors, the synthetic labels and the outline drawn
round the atom peaks the network's cluster holds. Atom mode
(``"atoms"``): one Gaussian heatmap per atom; peaks become points, small disks
the labels, close atoms optionally one cluster (``cluster_distance_nm``).

Every image is normalised by its own percentiles (so absolute intensity does
not matter), optionally after subtracting its smooth background
(``background_nm``: for atoms on an uneven support) and resampled to the working pixel size (``sample.working_pixel_size_nm``)
before the network sees it; results are mapped back to the micrograph's grid.
Inference runs on overlapping tiles blended with a smooth window, a batch of
tiles at a time, under ``torch.inference_mode``, on CUDA when available, with
each BatchNorm folded into its convolution and tensors in channels-last memory
(:func:`inference_network`), tiles sized so that few pixels are computed twice; each
tile's output is averaged over ``test_time_flips`` flips and quarter turns
(1 by default; 4 costs about 4x the network time of a single pass). With
``rescan_scales`` a particle frame is segmented again shrunk by each factor and
the objects that overlap none found before are added, so particles too large for
the network at the working scale are found too.

The network is in :mod:`.network`, the normalisation in :mod:`.preprocess`,
the tile plan in :mod:`.tiling` and the maps-to-instances steps in
:mod:`.instances`; this module trains and runs them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..physics.effects import FWHM_PER_SIGMA

from emcopilot.core.checkpoint import load_checkpoint, restore_module, save_checkpoint
from emcopilot.core.errors import CheckpointError, EmcopilotError, InputError
from emcopilot.core.interfaces import Instances, Micrograph, TrainBudget
from emcopilot.core.recipe import Sample
from emcopilot.specimen.scale import labels_to_original, plan_scaling, points_to_original, to_working

from . import instances as post
from .network import UNet, inference_network, resolve_device  # noqa: F401  (importable from here)
from .preprocess import normalise, smooth_background  # noqa: F401
from .tiling import blend_window, check_memory, pad_to, tile_side, tile_starts

log = logging.getLogger(__name__)

PARTICLE_OUTPUTS = ("foreground", "distance")
ATOM_OUTPUTS = ("heatmap",)


# --------------------------------------------------------------------------- helpers

#: (quarter turns, horizontal flip): the identity first, then the transforms test-time averaging adds.
_SYMMETRIES = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))


# --------------------------------------------------------------------------- the segmenter

class UNetSegmenter:
    """Segmenter protocol implementation; see the module docstring."""

    def __init__(self, params: Mapping[str, Any], sample: Sample | None):
        self.params = dict(params)
        self.sample = sample or Sample.from_dict({})
        self.mode = self._mode()
        self.working_pixel_size_nm = float(self.sample.working_pixel_size_nm)
        background_nm = self.params["background_nm"]
        self.normalisation = {"percentiles": list(self.params["normalise_percentiles"]),
                              "invert": bool(self.params["invert_dark_objects"] and
                                             self.sample.particle_contrast == "dark"),
                              "background_px": background_nm / self.working_pixel_size_nm if background_nm else None}
        if len(self.normalisation["percentiles"]) != 2 or not (
                0 <= self.normalisation["percentiles"][0] < self.normalisation["percentiles"][1] <= 100):
            raise InputError(f"normalise_percentiles must be [low, high] with 0 <= low < high <= 100, "
                             f"got {self.params['normalise_percentiles']}")
        rescan = self.params["rescan_scales"]
        if any(not (0.1 <= factor <= 10) or factor == 1 for factor in rescan):
            raise InputError(f"rescan_scales must be factors between 0.1 and 10 other than 1 "
                             f"(0.6: the frame shrunk to 0.6x), got {rescan}")
        if rescan and self.mode == "atoms":
            raise InputError(f"rescan_scales applies to particles and clusters, not to atoms (mode {self.mode!r}); "
                             f"use [] for single atoms")
        self.net = self._new_net()
        self.device = resolve_device(self.params["device"])
        self.trained = False
        self._warned_uncalibrated = False

    # ---- configuration

    def _mode(self) -> str:
        if self.params["mode"] != "auto":
            return self.params["mode"]
        return "atoms" if self.sample.kind == "atoms" else "particles"

    @property
    def sample_atom_radius_nm(self) -> float:
        """Half a bond of the sample's material: the radius of the atom disks clusters are drawn with."""
        from emcopilot.specimen.layout import LayoutSpec
        return float(LayoutSpec.from_sample(self.sample).atom_radius_nm)

    @property
    def seed_dynamic(self) -> float:
        """The watershed seeds' least dynamic: the parameter, else 0.2, or 1 (connected regions) for
        clusters, where a watershed on the distance map would cut a cluster into its atoms."""
        if self.params["seed_dynamic"] is not None:
            return float(self.params["seed_dynamic"])
        return 1.0 if self.sample.kind == "clusters" else 0.2

    @property
    def outputs(self) -> tuple[str, ...]:
        return PARTICLE_OUTPUTS if self.mode == "particles" else ATOM_OUTPUTS

    def architecture(self) -> dict[str, Any]:
        return {"network": "unet", "depth": self.params["depth"], "width": self.params["width"],
                "in_channels": 1, "outputs": list(self.outputs), "mode": self.mode}

    def _new_net(self) -> UNet:
        net = UNet(self.params["depth"], self.params["width"], len(self.outputs))
        # objects are a minority of pixels: start near the prior instead of 0.5 (sigmoid(-2) = 0.12,
        # about a particle coverage; sigmoid(-4) = 0.018 for atom heatmaps), as in RetinaNet (Lin et al. 2017)
        nn.init.constant_(net.head.bias, -2.0 if self.mode == "particles" else -4.0)
        return net

    def _px(self, nm: float) -> float:
        return nm / self.working_pixel_size_nm

    # ---- training

    def _targets(self, image: np.ndarray, label: Instances) -> np.ndarray:
        """(C, H, W) float32 targets on the image's grid."""
        if self.mode == "particles":
            if label.labels is None:
                raise InputError("particle mode trains on label images; these Instances hold points only")
            return np.stack(post.particle_targets(label.labels))
        points = post.points_of(label.labels, label.points)
        return post.atom_heatmap(points, image.shape, self._px(self.params["atom_sigma_nm"]))[None]

    def _check_pairs(self, images: Sequence[np.ndarray], labels: Sequence[Instances]) -> None:
        if len(images) != len(labels) or not images:
            raise InputError(f"fit needs as many label sets as images (at least one), got {len(images)} images "
                             f"and {len(labels)} labels")
        for index, (image, label) in enumerate(zip(images, labels)):
            image = np.asarray(image)
            if image.ndim != 2:
                raise InputError(f"training image {index} must be 2-D, got shape {image.shape}")
            if not np.isfinite(image).all():
                raise InputError(f"training image {index} has NaN or infinite pixels")
            if label.labels is not None and label.labels.shape != image.shape:
                raise InputError(f"training image {index}: labels {label.labels.shape} differ from image {image.shape}")

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[Instances], workdir: Path | None = None, *,
            budget: TrainBudget) -> dict[str, Any]:
        """Train on images already at the working pixel size; returns the loss history."""
        self._check_pairs(images, labels)
        torch.manual_seed(budget.seed)
        rng = np.random.default_rng(budget.seed)
        self.net = self._new_net()  # seeded initialisation
        device = resolve_device(budget.device)
        self.device = device
        crop = int(budget.crop_px) // 2 ** self.params["depth"] * 2 ** self.params["depth"]
        if crop < 2 ** self.params["depth"]:
            raise InputError(f"crop_px {budget.crop_px} is smaller than the U-Net's {2 ** self.params['depth']} px")
        stacks = []  # (1 + C, H, W): normalised image and targets, padded to at least one crop
        for image, label in zip(images, labels):
            image = np.asarray(image, np.float32)
            stack = np.concatenate([normalise(image, **self.normalisation)[None], self._targets(image, label)])
            stacks.append(pad_to(stack, (crop, crop)))
        weights = np.array([s.shape[1] * s.shape[2] for s in stacks], float)
        weights /= weights.sum()
        self._synthetic = (stacks, weights, crop, int(budget.steps))  # for adapt(): half of each batch
        # channels-last: oneDNN convolves (and back-propagates) about 1.3x faster so on a CPU
        net = self.net.to(device).to(memory_format=torch.channels_last).train()
        optimiser = torch.optim.AdamW(net.parameters(), lr=self.params["learning_rate"], weight_decay=1e-4)
        history: dict[str, Any] = {"loss": [], "step": [], "device": str(device), "crop_px": crop,
                                   "batch_size": budget.batch_size, "seed": budget.seed}
        started = time.perf_counter()
        progress = budget.progress_bar("unet")
        schedule = budget.schedule()
        step = 0
        for step in range(1, budget.steps + 1):
            elapsed_s = time.perf_counter() - started
            done = schedule.done(step - 1, elapsed_s)
            if done >= 1:
                log.warning("unet: stopped after step %d of %d: max_minutes=%s reached", step - 1, budget.steps,
                            budget.max_minutes)
                history["stopped_early"] = f"max_minutes {budget.max_minutes} reached after step {step - 1}"
                step -= 1
                break
            for group in optimiser.param_groups:
                group["lr"] = _cosine_lr(self.params["learning_rate"], done)
            batch = torch.from_numpy(np.stack([self._sample_crop(stacks[i], crop, rng)
                                               for i in rng.choice(len(stacks), budget.batch_size, p=weights)]))
            batch = batch.to(device).contiguous(memory_format=torch.channels_last)
            loss = self._loss(net(batch[:, :1]), batch[:, 1:])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if step % 10 == 0 or step == budget.steps:
                history["loss"].append(float(loss.detach()))
                history["step"].append(step)
            progress.advance(step, elapsed_s)
        progress.close()
        net.to(memory_format=torch.contiguous_format).eval()  # weights are saved as plain tensors
        self.trained = True
        history.update(steps=step, seconds=time.perf_counter() - started,
                       annealed_by="steps" if schedule.by_time_from is None
                       else f"time from step {schedule.by_time_from} (max_minutes {budget.max_minutes})")
        return history

    def _sample_crop(self, stack: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
        """A random, augmented (1 + C, crop, crop) training sample."""
        params = self.params
        jitter = params["scale_jitter"]
        scale = float(np.exp(rng.uniform(np.log(1 - jitter), np.log(1 + jitter)))) if jitter > 0 else 1.0
        size = int(min(round(crop * scale), stack.shape[1], stack.shape[2]))
        row = rng.integers(0, stack.shape[1] - size + 1)
        col = rng.integers(0, stack.shape[2] - size + 1)
        sample = stack[:, row:row + size, col:col + size]
        if size != crop:
            resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(sample))[None], size=(crop, crop),
                                    mode="bilinear", align_corners=False)[0].numpy()
            if self.mode == "particles":
                resized[1] = resized[1] >= 0.5  # foreground stays binary
            if len(resized) > 1 + len(self.outputs):
                resized[-1] = resized[-1] >= 0.5  # so does the self-training weight
            sample = resized
        if params["augment_flips"]:
            sample = np.rot90(sample, rng.integers(4), axes=(1, 2))
            if rng.random() < 0.5:
                sample = sample[:, :, ::-1]
        sample = np.array(sample, np.float32)
        image = sample[0]
        if params["gamma_jitter"] > 0:  # sign-preserving gamma on the normalised intensities
            gamma = float(np.exp(rng.uniform(-params["gamma_jitter"], params["gamma_jitter"])))
            image = np.sign(image) * np.abs(image) ** gamma
        if params["intensity_jitter"] > 0:
            image = image * (1 + rng.uniform(-1, 1) * params["intensity_jitter"]) \
                + rng.uniform(-1, 1) * params["intensity_jitter"]
        if params["noise_std"] > 0:
            image = image + rng.normal(0, rng.uniform(0, params["noise_std"]), image.shape)
        sample[0] = image
        return sample

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss; ``weight`` (N, H, W) of 0 and 1 leaves the 0 pixels out (self-training)."""
        params = self.params
        if self.mode == "particles":
            if weight is None:
                foreground = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0])
                distance = F.binary_cross_entropy_with_logits(logits[:, 1], targets[:, 1])
                probability, truth = torch.sigmoid(logits[:, 0]), targets[:, 0]
            else:
                count = weight.sum().clamp(min=1.0)
                foreground = (F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0], reduction="none")
                              * weight).sum() / count
                distance = (F.binary_cross_entropy_with_logits(logits[:, 1], targets[:, 1], reduction="none")
                            * weight).sum() / count
                probability, truth = torch.sigmoid(logits[:, 0]) * weight, targets[:, 0] * weight
            # soft Dice (Milletari et al. 2016) keeps sparse particles from being drowned by background
            dice = 1 - (2 * (probability * truth).sum() + 1) / (probability.sum() + truth.sum() + 1)
            return (params["foreground_loss_weight"] * foreground + params["dice_loss_weight"] * dice
                    + params["distance_loss_weight"] * distance)
        heat = torch.sigmoid(logits[:, 0])
        weight = 1 + params["heatmap_positive_weight"] * targets[:, 0]
        return params["heatmap_loss_weight"] * (weight * (heat - targets[:, 0]) ** 2).mean()

    # ---- self-training

    def adapt(self, images: Sequence[np.ndarray], workdir: Path | None = None, *,
              budget: TrainBudget) -> dict[str, Any] | None:
        """Self-training on the real micrographs (working grid, unlabelled), after :meth:`fit`.

        The trained network (the teacher) measures each image; its objects become foreground and
        distance targets, pixels whose foreground probability stays below
        ``self_training_ignore_below`` become background, and the pixels between (faint bumps it
        is unsure of, the rims of dropped objects) are left out of the loss. The same network then
        trains on for ``self_training`` times the budget's steps, every batch half real crops with
        those targets and half the synthetic crops it was trained on (so it keeps what the exact
        labels taught), at a third of the learning rate, annealed. Particles and clusters only
        (atoms: returns ``None``).
        """
        share = float(self.params["self_training"])
        synthetic, self._synthetic = getattr(self, "_synthetic", None), None  # held for this call only
        if share <= 0 or self.mode != "particles" or not images:
            return None
        if not self.trained:
            raise EmcopilotError("unet segmenter: adapt() needs a trained network; call fit() first")
        crop = synthetic[2] if synthetic else int(budget.crop_px) // 2 ** self.params["depth"] * 2 ** self.params["depth"]
        steps = max(1, int(round(share * budget.steps)))
        started = time.perf_counter()
        real, kept_share = [], []
        for image in images:
            image = np.asarray(image, np.float32)
            normalised = normalise(image, **self.normalisation)
            maps = self.predict_maps(normalised)
            labels, _ = self._particles(maps)
            foreground, distance = post.particle_targets(labels)
            weight = ((labels > 0) | (maps[0] < self.params["self_training_ignore_below"])).astype(np.float32)
            kept_share.append(float(weight.mean()))
            real.append(pad_to(np.stack([normalised, foreground, distance, weight]), (crop, crop)))
        real_weights = np.array([s.shape[1] * s.shape[2] for s in real], float)
        real_weights /= real_weights.sum()
        rng = np.random.default_rng(budget.seed + 1)
        torch.manual_seed(budget.seed + 1)
        device = self.device
        net = self.net.to(device).to(memory_format=torch.channels_last).train()
        base_lr = self.params["learning_rate"] / 3
        optimiser = torch.optim.AdamW(net.parameters(), lr=base_lr, weight_decay=1e-4)
        # the time cap scales with the steps, so a capped profile stays within its share of the clock
        adapt_budget = dataclasses.replace(budget, steps=steps, max_minutes=None if budget.max_minutes is None
                                           else budget.max_minutes * share)
        schedule = adapt_budget.schedule()
        progress = adapt_budget.progress_bar("unet self-training")
        history: dict[str, Any] = {"loss": [], "step": [], "images": len(real), "planned_steps": steps,
                                   "used_pixel_share": round(float(np.mean(kept_share)), 4)}
        half = max(1, budget.batch_size // 2) if synthetic else budget.batch_size
        step = 0
        for step in range(1, steps + 1):
            elapsed_s = time.perf_counter() - started
            done = schedule.done(step - 1, elapsed_s)
            if done >= 1:
                log.warning("unet: self-training stopped after step %d of %d: max_minutes=%s reached", step - 1,
                            steps, adapt_budget.max_minutes)
                history["stopped_early"] = f"max_minutes {adapt_budget.max_minutes} reached after step {step - 1}"
                step -= 1
                break
            for group in optimiser.param_groups:
                group["lr"] = _cosine_lr(base_lr, done)
            crops = [self._sample_crop(real[i], crop, rng) for i in rng.choice(len(real), half, p=real_weights)]
            if synthetic:
                stacks, weights = synthetic[0], synthetic[1]
                for i in rng.choice(len(stacks), budget.batch_size - half, p=weights):
                    sample = self._sample_crop(stacks[i], crop, rng)
                    crops.append(np.concatenate([sample, np.ones((1,) + sample.shape[1:], np.float32)]))
            batch = torch.from_numpy(np.stack(crops)).to(device).contiguous(memory_format=torch.channels_last)
            loss = self._loss(net(batch[:, :1]), batch[:, 1:-1], batch[:, -1])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if step % 10 == 0 or step == steps:
                history["loss"].append(float(loss.detach()))
                history["step"].append(step)
            progress.advance(step, elapsed_s)
        progress.close()
        net.to(memory_format=torch.contiguous_format).eval()
        history.update(steps=step, seconds=time.perf_counter() - started)
        return history

    # ---- inference

    def predict_maps(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) output probabilities for a normalised working-grid image, tile by tile."""
        multiple = 2 ** self.params["depth"]
        height, width = image.shape
        tile = max(multiple, self.params["tile_px"] // multiple * multiple)
        overlap = min(self.params["tile_overlap_px"], tile // 2)
        tile_h = tile_side(height, tile, overlap, multiple)
        tile_w = tile_side(width, tile, overlap, multiple)
        padded = pad_to(image, (max(height, tile_h), max(width, tile_w)))
        starts = [(r, c) for r in tile_starts(padded.shape[0], tile_h, tile_h - overlap)
                  for c in tile_starts(padded.shape[1], tile_w, tile_w - overlap)]
        weight = np.outer(blend_window(tile_h, overlap if padded.shape[0] > tile_h else 0),
                          blend_window(tile_w, overlap if padded.shape[1] > tile_w else 0)).astype(np.float32)
        total = np.zeros((len(self.outputs),) + padded.shape, np.float32)
        norm = np.zeros(padded.shape, np.float32)
        net = inference_network(self.net, self.device)
        batch_size = self.params["tile_batch"]
        with torch.inference_mode():
            for first in range(0, len(starts), batch_size):
                chunk = starts[first:first + batch_size]
                tiles = torch.from_numpy(np.stack([padded[r:r + tile_h, c:c + tile_w] for r, c in chunk])[:, None])
                tiles = tiles.to(self.device).contiguous(memory_format=torch.channels_last)
                probabilities = self._forward_averaged(net, tiles).float().cpu().numpy()
                for (r, c), probability in zip(chunk, probabilities):
                    total[:, r:r + tile_h, c:c + tile_w] += probability * weight
                    norm[r:r + tile_h, c:c + tile_w] += weight
        self.last_tiles = len(starts)
        del padded
        total /= norm  # in place: the maps are the one frame-sized array this returns
        return total[:, :height, :width]

    def _forward_averaged(self, net: nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """Sigmoid outputs averaged over the first ``test_time_flips`` symmetries of the square.

        Micrographs have no preferred orientation; averaging the network over
        flips and quarter turns (each undone on its output) removes the
        orientation-dependent part of its error.
        """
        total = None
        for turns, flip in _SYMMETRIES[:self.params["test_time_flips"]]:
            view = torch.rot90(tiles.flip(-1) if flip else tiles, turns, dims=(-2, -1))
            out = torch.rot90(torch.sigmoid(net(view)), -turns, dims=(-2, -1))
            out = out.flip(-1) if flip else out
            total = out if total is None else total + out
        return total / self.params["test_time_flips"]

    def _particles(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Particles (labels, scores) on the working grid from the foreground and distance maps."""
        diameter_min_nm = self.params["min_diameter_nm"] or 0.5 * self.sample.diameter_nm[0]
        return post.particles_from_maps(
            maps[0], maps[1], foreground_threshold=self.params["foreground_threshold"],
            seed_dynamic=self.seed_dynamic, seed_threshold=self.params["seed_threshold"],
            min_area_px=math.pi / 4 * self._px(diameter_min_nm) ** 2, grow_px=self._px(self.params["grow_nm"]),
            min_score=self.params["min_score"])

    def _rescan(self, micrograph: Micrograph, labels: np.ndarray, scores: np.ndarray,
                metadata: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """The particles found again with the frame shrunk by each of ``rescan_scales``, added where new.

        A network trained over the recipe's size range at its working scale
        misses what it sees too large: particles at the top of the range, or a
        whole frame whose pixel size was estimated too large. Each further pass
        treats the pixel size as that factor of itself, so particles look that
        much smaller to the network; its objects that overlap none found so far
        (box IoU < 0.1) are added, with their own scores. Sizes are measured on
        the micrograph's own grid, so they do not depend on the pass.
        """
        added = []
        pixel_size = micrograph.pixel_size_nm or self.working_pixel_size_nm
        for factor in self.params["rescan_scales"]:
            scaling = plan_scaling(micrograph.shape, pixel_size * factor, self.working_pixel_size_nm,
                                   micrograph.name)
            maps = self.predict_maps(normalise(to_working(micrograph.data, scaling), **self.normalisation))
            metadata["tiles"] += self.last_tiles
            extra, extra_scores = self._particles(maps)
            labels, scores, count = post.add_unmatched(labels, scores, labels_to_original(extra, scaling),
                                                       extra_scores)
            added.append(count)
        if added:
            metadata["rescan_added"] = dict(zip(map(str, self.params["rescan_scales"]), added))
        return labels, scores

    def predict(self, micrograph: Micrograph) -> Instances:
        if not self.trained:
            raise EmcopilotError("unet segmenter has no weights: call fit() or load(model_dir) first")
        micrograph.require_finite()
        if micrograph.pixel_size_nm is None and not self._warned_uncalibrated:
            warnings.warn(f"{micrograph.name}: no pixel size; treating it as already at the model's working "
                          f"{self.working_pixel_size_nm} nm/px (sizes stay in pixels; pass --pixel-size-nm)",
                          stacklevel=2)
            self._warned_uncalibrated = True
        scaling = plan_scaling(micrograph.shape, micrograph.pixel_size_nm, self.working_pixel_size_nm,
                               micrograph.name)
        check_memory(micrograph.name, micrograph.shape, scaling.working_shape)
        maps = self.predict_maps(normalise(to_working(micrograph.data, scaling), **self.normalisation))
        metadata = {"segmenter": "unet", "mode": self.mode, **scaling.as_dict(), "tiles": self.last_tiles,
                    "device": str(self.device)}
        if self.mode == "particles":
            labels, scores = self._particles(maps)
            labels = labels_to_original(labels, scaling)
            labels, scores = self._rescan(micrograph, labels, scores, metadata)
            if self.sample.kind == "clusters" and self.params["cluster_outline"] == "atoms":
                # the atoms in the recorded contrast on the micrograph's own grid (a resampled or
                # background-subtracted image blurs them), round the clusters the network found
                nm_per_px = micrograph.pixel_size_nm or self.working_pixel_size_nm
                labels, atoms = post.outlines_from_atoms(
                    micrograph.data, labels, sigma_px=self.params["cluster_atom_fwhm_nm"] / FWHM_PER_SIGMA / nm_per_px,
                    min_distance_px=self.params["min_atom_distance_nm"] / nm_per_px,
                    radius_px=self.sample_atom_radius_nm / nm_per_px, fraction=self.params["cluster_atom_fraction"])
                metadata["atoms_per_cluster"] = atoms.tolist()
            return Instances(labels=labels, scores=scores, metadata=metadata)
        cluster_nm = self.params["cluster_distance_nm"]
        # the apparent width of one atom on the micrograph's own grid: the particle table fits it there
        if self.params["atom_position_fit"]:
            nm_per_px = micrograph.pixel_size_nm or self.working_pixel_size_nm
            metadata["atom_fwhm_px"] = math.sqrt(self.sample.diameter_nm[0] * self.sample.diameter_nm[1]) / nm_per_px
        points, labels, scores = post.atoms_from_heatmap(
            maps[0], threshold=self.params["peak_threshold"], min_distance_px=self._px(self.params["min_atom_distance_nm"]),
            disk_radius_px=self._px(self.params["atom_disk_radius_nm"]),
            cluster_distance_px=self._px(cluster_nm) if cluster_nm else None)
        return Instances(labels=labels_to_original(labels, scaling), points=points_to_original(points, scaling),
                         scores=scores, metadata=metadata)

    # ---- persistence

    def config(self) -> dict[str, Any]:
        return {"architecture": self.architecture(), "mode": self.mode,
                "working_pixel_size_nm": self.working_pixel_size_nm, "normalisation": self.normalisation,
                "segmenter": {"plugin": "unet", "params": self.params}, "sample": self.sample.as_dict()}

    def save(self, directory: Path) -> None:
        if not self.trained:
            raise EmcopilotError("unet segmenter has no weights to save: call fit() first")
        save_checkpoint(directory, self.net, self.config())

    def load(self, directory: Path) -> None:
        config, state_dicts = load_checkpoint(directory, expected_architecture=self.architecture())
        if "model" not in state_dicts:
            raise InputError(f"{directory}: checkpoint holds no 'model' network (found {', '.join(state_dicts)})")
        restore_module(self.net, state_dicts["model"], str(directory))
        where = Path(directory) / "config.json"
        working = config.get("working_pixel_size_nm", self.working_pixel_size_nm)
        if isinstance(working, bool) or not isinstance(working, (int, float)) or not (
                math.isfinite(working) and working > 0):
            raise CheckpointError(f"{where}: working_pixel_size_nm must be a positive number of nm, got {working!r}")
        normalisation = config.get("normalisation", self.normalisation)
        if not isinstance(normalisation, Mapping) or set(normalisation) != set(self.normalisation):
            raise CheckpointError(f"{where}: normalisation must be a mapping with the keys "
                                  f"{', '.join(sorted(self.normalisation))}, got {normalisation!r}")
        if not _same_normalisation(normalisation, self.normalisation):
            # the parameters asked for now (e.g. a --param override) would normalise differently from
            # what the network learned on: its training decides
            warnings.warn(f"{directory}: background_nm, normalise_percentiles and invert_dark_objects are fixed "
                          f"by the model's training ({dict(normalisation)}); the values given now "
                          f"({self.normalisation}) are not used", stacklevel=2)
        self.working_pixel_size_nm = float(working)
        self.normalisation = dict(normalisation)
        self.net.to(self.device).eval()
        self.trained = True


def _same_normalisation(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def close(x: Any, y: Any) -> bool:
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
            return math.isclose(float(x), float(y), rel_tol=1e-6)
        if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
            return len(x) == len(y) and all(close(u, v) for u, v in zip(x, y))
        return x == y
    return set(a) == set(b) and all(close(a[key], b[key]) for key in a)


def _cosine_lr(base_lr: float, progress: float) -> float:
    """Cosine annealing (Loshchilov & Hutter, SGDR, 2017) from ``base_lr`` to a tenth of it."""
    floor = 0.1 * base_lr
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
