"""The ``sam`` prior extractor: Segment Anything with electron-microscopy filtering.

Getting a checkpoint: the weights are not shipped and cannot be downloaded at
run time. Download one of the official checkpoints listed in the
segment-anything README (github.com/facebookresearch/segment-anything,
"Model Checkpoints")::

    vit_h: https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth
    vit_l: https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth
    vit_b: https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth

and give its path as the recipe parameter ``checkpoint`` or in the environment
variable ``EMCOPILOT_SAM_CHECKPOINT``. The file is read with
``torch.load(weights_only=True)`` (tensors only; no code runs) or as
``.safetensors``; the architecture (vit_b/l/h, or any smaller ViT built with
``segment_anything.modeling``) is inferred from the state-dict shapes.

For one micrograph:

1. scale: pixel size from the file or estimated; expected sizes in pixels;
2. tiling with overlap: SAM resizes its input to 1024 px, so tiles are cut so
   that a typical object spans ``object_px_in_model`` model pixels (small
   particles are upsampled; SAM is weak on objects of a few pixels);
3. automatic mask generation on every tile (EM settings: a point grid,
   predicted-IoU and stability thresholds from the params); a mask is kept
   by the tile whose core (tile minus half the overlap) holds its centroid;
4. overlapping masks resolved (:func:`.filtering.masks_to_labels`: duplicates
   and containers dropped), then filtered (:func:`.filtering.filter_regions`:
   size in nm, contrast against a ring around the object — brighter for
   HAADF, darker for BF —, solidity, support-sized masks);
5. false-negative recovery: Laplacian-of-Gaussian blob peaks that no mask
   covers prompt SAM with a single point; the best mask is filtered the same way.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from emcopilot.core.errors import CheckpointError, InputError
from emcopilot.core.interfaces import Instances, Micrograph
from emcopilot.specimen.morphology import normalise_image

from .filtering import filter_regions, masks_to_labels
from .scale import image_scale, is_bright, robust_noise

log = logging.getLogger("emcopilot.priors.sam")

CHECKPOINT_ENV = "EMCOPILOT_SAM_CHECKPOINT"
STANDARD_TYPES = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


# --------------------------------------------------------------------------- checkpoint

def checkpoint_path(param: str | None) -> Path:
    """The checkpoint file from the param or the environment; a clear error otherwise."""
    value = param or os.environ.get(CHECKPOINT_ENV)
    if not value:
        raise CheckpointError(
            "the sam prior extractor needs a Segment Anything checkpoint: set the recipe parameter "
            f"'prior_extractor: {{plugin: sam, params: {{checkpoint: /path/sam_vit_b_01ec64.pth}}}}' or the "
            f"environment variable {CHECKPOINT_ENV}=/path/to/checkpoint (official vit_b/l/h files are "
            "linked from the segment-anything README), or use the 'classical' extractor instead")
    path = Path(value).expanduser()
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint {path} does not exist (from "
                              f"{'the checkpoint parameter' if param else CHECKPOINT_ENV})")
    return path


def load_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a ``.pth`` (weights only, no code) or ``.safetensors`` checkpoint."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"SAM checkpoint {path} could not be read as tensors only "
                              f"({type(error).__name__}: {error}); files that need code to load are refused") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or "image_encoder.patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{path} is not a Segment Anything state dict "
                              "(no image_encoder.patch_embed.proj.weight)")
    return state


def architecture(state: dict[str, Any]) -> dict[str, Any]:
    """The SAM architecture implied by the state-dict shapes (vit_b/l/h or a custom ViT)."""
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    grid = int(state["image_encoder.pos_embed"].shape[1])
    depth = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("image_encoder.blocks."))
    global_attn, window_size, head_dim = [], 0, None
    for block in range(depth):
        rel_pos = state.get(f"image_encoder.blocks.{block}.attn.rel_pos_h")
        if rel_pos is None:
            raise CheckpointError("SAM checkpoint without relative position tables is not supported")
        head_dim = int(rel_pos.shape[1])
        if int(rel_pos.shape[0]) == 2 * grid - 1:
            global_attn.append(block)
        else:
            window_size = (int(rel_pos.shape[0]) + 1) // 2
    prompt_dim = int(state["image_encoder.neck.0.weight"].shape[0])
    decoder_depth = 1 + max(int(key.split(".")[3]) for key in state
                            if key.startswith("mask_decoder.transformer.layers."))
    return {
        "model_type": STANDARD_TYPES.get(embed_dim, "custom") if depth in (12, 24, 32) else "custom",
        "embed_dim": embed_dim, "depth": depth, "num_heads": embed_dim // head_dim, "patch_size": patch_size,
        "img_size": grid * patch_size, "window_size": window_size, "global_attn_indexes": global_attn,
        "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        "prompt_dim": prompt_dim, "decoder_depth": decoder_depth,
        "decoder_mlp_dim": int(state["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]),
        "decoder_heads": 8 if prompt_dim % 16 == 0 else 1,
        "iou_hidden_dim": int(state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]),
        "mask_in_chans": int(state["prompt_encoder.mask_downscaling.0.weight"].shape[0]) * 4,
    }


def build_sam(arch: dict[str, Any]):
    """A :class:`segment_anything.modeling.Sam` with the given architecture (random weights)."""
    from functools import partial

    import torch
    from segment_anything.modeling import (ImageEncoderViT, MaskDecoder, PromptEncoder, Sam,
                                           TwoWayTransformer)

    grid = arch["img_size"] // arch["patch_size"]
    encoder = ImageEncoderViT(
        depth=arch["depth"], embed_dim=arch["embed_dim"], img_size=arch["img_size"], mlp_ratio=arch["mlp_ratio"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch["num_heads"],
        patch_size=arch["patch_size"], qkv_bias=True, use_rel_pos=True,
        global_attn_indexes=tuple(arch["global_attn_indexes"]), window_size=arch["window_size"],
        out_chans=arch["prompt_dim"])
    prompt = PromptEncoder(embed_dim=arch["prompt_dim"], image_embedding_size=(grid, grid),
                           input_image_size=(arch["img_size"], arch["img_size"]), mask_in_chans=arch["mask_in_chans"])
    decoder = MaskDecoder(num_multimask_outputs=3,
                          transformer=TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=arch["prompt_dim"],
                                                        mlp_dim=arch["decoder_mlp_dim"], num_heads=arch["decoder_heads"]),
                          transformer_dim=arch["prompt_dim"], iou_head_depth=3,
                          iou_head_hidden_dim=arch["iou_hidden_dim"])
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def load_sam(path: Path, device: str):
    """Build SAM from a checkpoint file; returns ``(model, architecture)``."""
    state = load_state_dict(path)
    arch = architecture(state)
    model = build_sam(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"SAM checkpoint {path} does not match the inferred {arch['model_type']} "
                              f"architecture: {str(error).splitlines()[0]}") from None
    return model.to(device).eval(), arch


def resolve_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return device


# --------------------------------------------------------------------------- tiling

def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px with at least ``overlap`` px overlap covering ``length``."""
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [int(round(v)) for v in np.linspace(0, length - tile, count)]


def to_rgb(tile: np.ndarray) -> np.ndarray:
    """A normalised grey tile as the uint8 RGB image SAM expects."""
    grey = np.clip(tile * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


class SamExtractor:
    """SAM automatic masks on tiles sized for the objects, EM filtering, point-prompt recovery."""

    def __init__(self, params: dict[str, Any], sample: Any = None):
        import torch

        self.params = dict(params)
        self.sample = sample
        self.bright = is_bright(params.get("contrast"), sample)
        self.checkpoint = checkpoint_path(params.get("checkpoint"))
        self.device = resolve_device(params["device"])
        self.model, self.arch = load_sam(self.checkpoint, self.device)
        self._torch = torch
        log.info("SAM %s loaded from %s on %s", self.arch["model_type"], self.checkpoint, self.device)

    def _generator(self):
        from segment_anything import SamAutomaticMaskGenerator
        params = self.params
        return SamAutomaticMaskGenerator(self.model, points_per_side=params["points_per_side"],
                                         points_per_batch=params["points_per_batch"],
                                         pred_iou_thresh=params["pred_iou_thresh"],
                                         stability_score_thresh=params["stability_score_thresh"])

    def _tile_masks(self, image: np.ndarray, tile: int, overlap: int):
        """Automatic masks of every tile, in image coordinates, kept by the tile whose core holds them."""
        generator = self._generator()
        height, width = image.shape
        masks, scores, tiles = [], [], 0
        margin = overlap // 2
        row_starts, col_starts = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
        for row in row_starts:
            for col in col_starts:
                tiles += 1
                crop = image[row:row + tile, col:col + tile]
                with self._torch.inference_mode():
                    results = generator.generate(to_rgb(crop))
                low_r = margin if row > 0 else 0
                low_c = margin if col > 0 else 0
                high_r = crop.shape[0] - (margin if row + tile < height else 0)
                high_c = crop.shape[1] - (margin if col + tile < width else 0)
                for result in results:
                    segmentation = result["segmentation"]
                    rows, cols = np.nonzero(segmentation)
                    if not len(rows):
                        continue
                    centre_r, centre_c = rows.mean(), cols.mean()
                    if not (low_r <= centre_r < high_r and low_c <= centre_c < high_c):
                        continue
                    full = np.zeros(image.shape, bool)
                    full[row:row + crop.shape[0], col:col + crop.shape[1]] = segmentation
                    masks.append(full)
                    scores.append(float(result["predicted_iou"]) * float(result["stability_score"]))
        return masks, scores, tiles

    def _recover(self, image: np.ndarray, labels: np.ndarray, objects: np.ndarray, noise: float,
                 typical_px: float, tile: int):
        """Point prompts at LoG blob peaks that no mask covers; returns masks and scores."""
        from scipy import ndimage
        from segment_anything import SamPredictor
        from skimage.feature import peak_local_max

        sigma = max(1.0, typical_px / (2 * math.sqrt(2)))
        response = -ndimage.gaussian_laplace(objects, sigma) * sigma ** 2
        response_noise = max(robust_noise(response), 1e-9)
        peaks = peak_local_max(response, min_distance=max(1, int(typical_px / 2)),
                               threshold_abs=self.params["recovery_snr"] * response_noise, exclude_border=False)
        missed = [p for p in peaks if labels[p[0], p[1]] == 0][: self.params["max_recovery_prompts"]]
        predictor = SamPredictor(self.model)
        masks, scores = [], []
        half = tile // 2
        for row, col in missed:
            top = int(np.clip(row - half, 0, max(0, image.shape[0] - tile)))
            left = int(np.clip(col - half, 0, max(0, image.shape[1] - tile)))
            crop = image[top:top + tile, left:left + tile]
            with self._torch.inference_mode():
                predictor.set_image(to_rgb(crop))
                proposals, quality, _ = predictor.predict(point_coords=np.array([[col - left, row - top]], float),
                                                          point_labels=np.array([1]), multimask_output=True)
            best = int(np.argmax(quality))
            full = np.zeros(image.shape, bool)
            full[top:top + crop.shape[0], left:left + crop.shape[1]] = proposals[best]
            masks.append(full)
            scores.append(float(quality[best]))
        return masks, scores, len(missed)

    def extract(self, micrograph: Micrograph) -> Instances:
        from scipy import ndimage

        micrograph.require_finite()
        params = self.params
        scale = image_scale(micrograph, params, self.sample, self.bright)
        image = normalise_image(micrograph.data)
        objects = image if self.bright else 1.0 - image
        typical_px = scale.typical_diameter_px
        model_px = self.arch["img_size"]
        tile = int(np.clip(round(typical_px * model_px / params["object_px_in_model"]), 32, max(image.shape)))
        overlap = int(min(tile // 2, math.ceil(scale.max_diameter_px)))
        masks, scores, tiles = self._tile_masks(image, tile, overlap)
        labels, _, resolve_report = masks_to_labels(masks, scores, image.shape)
        background = objects - ndimage.gaussian_filter(objects, 2 * typical_px)
        noise = max(robust_noise(background), 1e-6)
        filters = dict(noise=noise, min_diameter_px=scale.min_diameter_px, max_diameter_px=scale.max_diameter_px,
                       min_snr=params["min_contrast_snr"], min_solidity=params["min_solidity"],
                       max_area_fraction=params["max_area_fraction"], name=micrograph.name)
        labels, report = filter_regions(labels, background, **filters)
        recovered = prompts = 0
        if params["recover_missed"]:
            extra, extra_scores, prompts = self._recover(image, labels, objects, noise, typical_px, tile)
            if extra:
                extra_labels, _, _ = masks_to_labels(extra, extra_scores, image.shape)
                extra_labels[labels > 0] = 0
                extra_labels, _ = filter_regions(extra_labels, background, **filters)
                recovered = int(extra_labels.max())
                labels = np.where(extra_labels > 0, extra_labels + labels.max(), labels).astype(np.int32)
        metadata = {**scale.metadata(), "extractor": "sam", "model_type": self.arch["model_type"],
                    "checkpoint": str(self.checkpoint), "device": self.device, "tile_px": tile,
                    "overlap_px": overlap, "tiles": tiles, **resolve_report, **report,
                    "recovery_prompts": prompts, "recovered": recovered}
        if not (labels > 0).any():
            log.warning("%s: SAM found no object that passed the filters", micrograph.name)
        return Instances(labels=labels, metadata=metadata)
