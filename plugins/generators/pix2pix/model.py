"""The pix2pix generator: training with validation-based checkpoint selection, rendering, checkpoints.

What the generator learns, and what it leaves to the physics adapter
--------------------------------------------------------------------
It learns the map (label map -> real image) of the lab's own micrographs at the
working pixel size: particle-vs-support contrast, the support's texture and
its large-scale thickness variation, and how contrast varies across a particle
(through the relative-thickness channel). Its L1 term makes the output the
conditional *mean* image, which is smooth: pixel noise is unpredictable from
the label map, so it averages away; the adversarial term sharpens edges and
texture but, without a noise input, cannot reproduce random shot noise either.
The output is therefore treated as a *clean* image, in the intensity range of
the training images (the median of their 1st..99th percentile ranges), and
it already carries the probe blur of those images. The physics adapter adds
what varies from frame to frame, once: shot and read noise at the dose, scan
jitter and drift. Use it with ``clean_units: detector`` and ``apply_psf:
false`` (no second blur); do not add noise before the adapter.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from emcopilot.core.checkpoint import load_checkpoint, restore_module, save_checkpoint
from emcopilot.core.errors import CheckpointError, InputError
from emcopilot.core.interfaces import TrainBudget
from emcopilot_plugins.metrics.image import LPIPS, PSNR, SSIM, RealismGap

from . import data
from .losses import adversarial_loss, ssim_loss
from .networks import UNetGenerator, build_discriminator, init_weights

log = logging.getLogger(__name__)

#: Validation metrics: history key and whether higher is better. ``select_by`` names one.
SELECTION_METRICS = {"ssim": ("ssim", True), "psnr": ("psnr_dB", True), "lpips": ("lpips", False),
                     "realism-gap": ("realism_gap", False)}
#: Smallest crop the PatchGAN's three stride-2 and two 4x4 stride-1 convolutions accept.
PATCH_MIN_CROP_PX = 32
#: The parameters that shape the generator network (stored and checked in checkpoints).
ARCHITECTURE_KEYS = ("width", "depth", "norm", "boundary_channel", "thickness_channel", "noise_channel")


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class Pix2Pix:
    """Conditional GAN generator: label map -> clean image (see the module docstring)."""

    def __init__(self, params: Mapping[str, Any], sample: Any = None):
        self.params = dict(params)
        self.sample = sample
        self.generator = self._new_generator()
        self.device = torch.device("cpu")
        #: Output intensity range (low, high) learned from the training images; None until fitted/loaded.
        self.intensity: tuple[float, float] | None = None

    def _new_generator(self) -> UNetGenerator:
        generator = UNetGenerator(self.in_channels, self.params["width"], self.params["depth"], self.params["norm"])
        init_weights(generator)
        return generator

    @property
    def in_channels(self) -> int:
        return 1 + sum(bool(self.params[key]) for key in ("boundary_channel", "thickness_channel", "noise_channel"))

    def architecture(self) -> dict[str, Any]:
        return {"network": "pix2pix-unet", "in_channels": self.in_channels,
                **{key: self.params[key] for key in ARCHITECTURE_KEYS}}

    # ------------------------------------------------------------------ training

    def fit(self, label_maps: Sequence[np.ndarray], images: Sequence[Any], workdir: Path, *,
            budget: TrainBudget) -> dict[str, Any]:
        """Train from fresh, seeded weights on random crops of ``(label map, image)`` pairs.

        Validation runs every ``validate_every`` steps (and at the end) on
        crops of each image's held-back bottom band. The generator kept at the
        end is the best one by ``select_by``; the best by every metric is also
        written to ``workdir/best-<metric>/``.
        """
        params = self.params
        crop_px = budget.crop_px
        if crop_px % self.generator.pad_multiple:
            raise InputError(f"crop_px {crop_px} must be a multiple of 2**depth = {self.generator.pad_multiple}")
        if params["discriminator"] == "patch" and crop_px < PATCH_MIN_CROP_PX:
            raise InputError(f"the 70x70 PatchGAN needs crops of at least {PATCH_MIN_CROP_PX} px, got crop_px "
                             f"{crop_px}; raise crop_px or use discriminator: pixel")
        torch.manual_seed(budget.seed)
        self.generator = self._new_generator()  # training always starts from seeded initial weights
        rng = np.random.default_rng(budget.seed)
        pairs = data.prepare_pairs(label_maps, images, crop_px=crop_px, holdout_fraction=params["holdout_fraction"],
                                   boundary=params["boundary_channel"], thickness=params["thickness_channel"])
        self.intensity = tuple(float(v) for v in np.median([pair.bounds for pair in pairs], axis=0))
        validator = _Validator(pairs, crop_px, params["validation_crops"], budget.seed, params["select_by"])
        self.device = device = resolve_device(budget.device)
        use_amp = device.type == "cuda"
        generator = self.generator.to(device).train()
        discriminator = build_discriminator(params["discriminator"], self.in_channels + 1, params["width"],
                                            params["norm"]).to(device).train()
        init_weights(discriminator)
        betas = (0.5, 0.999)  # pix2pix's Adam settings
        optimiser_g = torch.optim.Adam(generator.parameters(), lr=params["learning_rate"], betas=betas)
        optimiser_d = torch.optim.Adam(discriminator.parameters(), lr=params["learning_rate"], betas=betas)
        noise = torch.Generator(device="cpu").manual_seed(budget.seed)
        history: dict[str, Any] = {"step": [], "loss_d": [], "loss_g_adversarial": [], "loss_l1": [],
                                   "loss_ssim": [], "validation": [], "device": str(device), "amp": use_amp,
                                   "pairs": len(pairs), "validation_crops": validator.count,
                                   "lpips": validator.lpips_status}
        started = time.perf_counter()
        progress = budget.progress_bar("pix2pix")
        workdir = Path(workdir)
        for step in range(1, budget.steps + 1):
            conditions, targets = data.random_batch(pairs, budget.batch_size, crop_px, rng)
            condition = self._with_noise(torch.from_numpy(conditions), noise).to(device)
            target = torch.from_numpy(targets).to(device)
            losses = self._train_step(generator, discriminator, optimiser_g, optimiser_d, condition, target, use_amp)
            history["step"].append(step)
            for key, value in losses.items():
                history[key].append(value)
            elapsed_s = time.perf_counter() - started
            out_of_time = budget.max_minutes is not None and elapsed_s > 60 * budget.max_minutes
            if step % params["validate_every"] == 0 or step == budget.steps or out_of_time:
                generator.eval()
                scores = validator.score(self._forward, step, generator.state_dict())
                generator.train()
                history["validation"].append(scores)
                log.info("pix2pix step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
            progress.advance(step, elapsed_s)
            if out_of_time:
                history["stopped_early"] = f"max_minutes {budget.max_minutes} reached at step {step}"
                break
        progress.close()
        seconds = time.perf_counter() - started
        history.update(seconds=seconds, steps_per_second=len(history["step"]) / seconds)
        if not history["loss_ssim"]:
            del history["loss_ssim"]
        self.generator = generator.eval()
        history.update(validator.finish(self, workdir))
        return history

    def _train_step(self, generator, discriminator, optimiser_g, optimiser_d, condition, target,
                    use_amp: bool) -> dict[str, float]:
        params = self.params
        autocast = torch.autocast(device_type=condition.device.type, dtype=torch.bfloat16, enabled=use_amp)
        with autocast:
            fake = generator(condition)
            real_logits = discriminator(torch.cat([condition, target], dim=1))
            fake_logits = discriminator(torch.cat([condition, fake.detach()], dim=1))
        loss_d = 0.5 * (adversarial_loss(real_logits, True, params["gan_loss"])
                        + adversarial_loss(fake_logits, False, params["gan_loss"]))
        optimiser_d.zero_grad(set_to_none=True)
        loss_d.backward()
        optimiser_d.step()

        with autocast:
            fake_logits = discriminator(torch.cat([condition, fake], dim=1))
        loss_adversarial = adversarial_loss(fake_logits, True, params["gan_loss"])
        loss_l1 = torch.nn.functional.l1_loss(fake.float(), target)
        loss_g = loss_adversarial + params["lambda_l1"] * loss_l1
        losses = {"loss_d": loss_d.item(), "loss_g_adversarial": loss_adversarial.item(), "loss_l1": loss_l1.item()}
        if params["lambda_ssim"] > 0:
            loss_ssim = ssim_loss(fake, target)
            loss_g = loss_g + params["lambda_ssim"] * loss_ssim
            losses["loss_ssim"] = loss_ssim.item()
        optimiser_g.zero_grad(set_to_none=True)
        loss_g.backward()
        optimiser_g.step()
        return losses

    def _with_noise(self, condition: torch.Tensor, noise: torch.Generator) -> torch.Tensor:
        if not self.params["noise_channel"]:
            return condition
        shape = (condition.shape[0], 1, *condition.shape[2:])
        return torch.cat([condition, torch.randn(shape, generator=noise)], dim=1)

    def _forward(self, conditions: np.ndarray, noise: torch.Generator) -> np.ndarray:
        """Generator output (normalised) for a batch of conditioning crops, in eval mode."""
        condition = self._with_noise(torch.from_numpy(conditions), noise).to(self.device)
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            return self.generator(condition).float().cpu().numpy()

    # ------------------------------------------------------------------ rendering

    def generate(self, layouts: Sequence[Any], rng: np.random.Generator) -> list[np.ndarray]:
        """Clean float32 images for layouts (``.labels``) or plain label arrays; see the module docstring."""
        if self.intensity is None:
            raise CheckpointError("pix2pix has no trained weights: call fit() or load(directory) first")
        noise = torch.Generator(device="cpu").manual_seed(int(rng.integers(2 ** 63 - 1)))
        multiple = self.generator.pad_multiple
        self.generator.eval().to(self.device)
        outputs = []
        for index, layout in enumerate(layouts):
            labels = data.label_array(layout, f"layout {index}")
            condition = data.condition_channels(labels, self.params["boundary_channel"],
                                                self.params["thickness_channel"])
            rows, columns = labels.shape
            pad = ((0, 0), (0, -rows % multiple), (0, -columns % multiple))
            condition = np.pad(condition, pad, mode="reflect" if min(rows, columns) > 1 else "edge")
            image = self._forward(condition[None], noise)[0, 0, :rows, :columns]
            outputs.append(data.denormalise(image, *self.intensity))
        return outputs

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_config(self) -> dict[str, Any]:
        return {"plugin": "pix2pix", "architecture": self.architecture(), "params": self.params,
                "intensity": list(self.intensity) if self.intensity else None}

    def save(self, directory: Path) -> None:
        if self.intensity is None:
            raise CheckpointError("pix2pix has no trained weights to save: call fit() or load() first")
        save_checkpoint(directory, {"generator": self.generator}, self.checkpoint_config())

    def load(self, directory: Path) -> None:
        config, state_dicts = load_checkpoint(directory, expected_architecture=self.architecture())
        if "generator" not in state_dicts:
            raise CheckpointError(f"{directory}: holds no 'generator' weights (found: {', '.join(state_dicts)})")
        intensity = config.get("intensity")
        if not (isinstance(intensity, list) and len(intensity) == 2):
            raise CheckpointError(f"{directory}: config.json lacks the output 'intensity' range [low, high]")
        restore_module(self.generator, state_dicts["generator"], label=str(directory))
        self.generator.eval()
        self.intensity = (float(intensity[0]), float(intensity[1]))


class _Validator:
    """Scores held-back crops and remembers the best generator weights by each metric."""

    def __init__(self, pairs: Sequence[data.Pair], crop_px: int, count: int, seed: int, select_by: str):
        self.conditions, self.targets = data.validation_tiles(pairs, crop_px, count, np.random.default_rng(seed))
        self.count = len(self.targets)
        self.seed, self.select_by = seed, select_by
        self.metrics = {"ssim": SSIM(), "psnr": PSNR(), "realism-gap": RealismGap(spectrum_bins=min(32, crop_px // 2))}
        try:
            self.metrics["lpips"] = LPIPS()
            self.lpips_status = "available"
        except CheckpointError as error:
            if select_by == "lpips":
                raise
            self.lpips_status = f"unavailable: {error}"
        self.best: dict[str, dict[str, Any]] = {}

    def score(self, forward, step: int, state_dict: Mapping[str, torch.Tensor]) -> dict[str, float]:
        noise = torch.Generator(device="cpu").manual_seed(self.seed)  # the same noise at every validation
        predictions = np.concatenate([forward(self.conditions[start:start + 16], noise)
                                      for start in range(0, self.count, 16)])
        fakes = list(predictions[:, 0].astype(np.float64))
        reals = list(self.targets[:, 0].astype(np.float64))
        scores: dict[str, float] = {"step": step}
        for metric in self.metrics.values():
            scores.update({k: v for k, v in metric(fakes, reals).items() if k != "pairs"})
        for name, (key, higher_is_better) in SELECTION_METRICS.items():
            if key not in scores:
                continue
            best = self.best.get(name)
            better = best is None or (scores[key] > best["value"] if higher_is_better else scores[key] < best["value"])
            if better:
                self.best[name] = {"step": step, "value": scores[key],
                                   "state": {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}}
        return scores

    def finish(self, model: Pix2Pix, workdir: Path) -> dict[str, Any]:
        """Write the best generator by each metric; load the one chosen by ``select_by``."""
        if not self.best:
            raise InputError("no validation ran: budget.steps must be at least 1")
        for name, best in self.best.items():
            save_checkpoint(workdir / f"best-{name}", {"generator": best["state"]},
                            dict(model.checkpoint_config(), selected_by=name, step=best["step"]))
        chosen = self.best[self.select_by]
        model.generator.load_state_dict(chosen["state"])
        model.generator.to(model.device)
        return {"best": {name: {"step": best["step"], "value": best["value"]} for name, best in self.best.items()},
                "selected_by": self.select_by, "selected_step": chosen["step"]}


