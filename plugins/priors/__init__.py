"""Built-in prior extractors: ``classical``, ``atoms`` and ``sam``.

Sizes are in nm and default to the recipe's ``sample.diameter_nm``; the
polarity defaults to ``sample.particle_contrast``. Implementations (and their
scikit-image, torch and segment-anything imports) load only when a recipe uses
them.
"""
from __future__ import annotations

from emcopilot import Param, hookimpl

_CONTRAST = Param(None, str, choices=("bright", "dark"),
                  help="objects brighter or darker than the support; default: the sample's particle_contrast")
_MIN_DIAMETER = Param(None, float, min=0.0, unit="nm", help="smallest object kept; default: sample.diameter_nm[0]")
_MAX_DIAMETER = Param(None, float, min=0.0, unit="nm", help="largest object kept; default: sample.diameter_nm[1]")

CLASSICAL_PARAMS = {
    "contrast": _CONTRAST,
    "min_diameter_nm": _MIN_DIAMETER,
    "max_diameter_nm": _MAX_DIAMETER,
    "working_diameter_px": Param(12.0, float, min=4.0, max=64.0, unit="px",
                                 help="images are block-reduced so a typical object spans about this many pixels"),
    "smoothing_fraction": Param(0.12, float, min=0.0, max=1.0,
                                help="Gaussian denoising sigma as a fraction of the typical diameter"),
    "background_size_factor": Param(1.2, float, min=1.0, max=20.0,
                                    help="top-hat square side as a multiple of the typical diameter"),
    "min_snr": Param(3.0, float, min=0.0, help="lowest threshold, in units of the top-hat's background noise"),
    "threshold": Param("otsu", str, choices=("otsu", "noise"),
                       help="otsu: Otsu's threshold of the top-hat (at least min_snr x noise); noise: min_snr x noise"),
    "grow_fraction": Param(0.6, float, min=0.0, max=1.0,
                           help="objects grow down to this fraction of the threshold (hysteresis; 1 = off)"),
    "min_contrast_snr": Param(3.0, float, min=0.0,
                              help="object mean minus the mean of a ring around it, in units of background noise"),
    "split_fraction": Param(0.35, float, min=0.0, max=2.0,
                            help="watershed markers at least this fraction of the typical diameter apart"),
    "min_solidity": Param(0.75, float, min=0.0, max=1.0, help="objects less convex than this are dropped"),
    "max_area_fraction": Param(0.25, float, min=0.0, max=1.0,
                               help="a mask larger than this fraction of the image is support, not an object"),
}

ATOMS_PARAMS = {
    "contrast": _CONTRAST,
    "min_diameter_nm": _MIN_DIAMETER,
    "max_diameter_nm": _MAX_DIAMETER,
    "atom_fwhm_nm": Param(None, float, min=0.0, unit="nm",
                          help="apparent full width at half maximum of one atom; default: geometric mean of the diameter range"),
    "background_nm": Param(0.25, float, min=0.0, unit="nm",
                           help="outer Gaussian sigma of the difference-of-Gaussians band-pass"),
    "noise_window_nm": Param(2.0, float, min=0.0, unit="nm", help="tile size of the local noise estimate"),
    "threshold_snr": Param(4.0, float, min=0.0, help="peak height in units of the local noise"),
    "min_separation_nm": Param(0.15, float, min=0.0, unit="nm", help="closest two detected atoms may be"),
    "disk_diameter_nm": Param(None, float, min=0.0, unit="nm",
                              help="diameter of each atom's label disk; default: the atom FWHM"),
    "group_clusters": Param(None, bool,
                            help="merge close atoms into labelled clusters; default: sample.kind == 'clusters'"),
    "cluster_distance_nm": Param(None, float, min=0.0, unit="nm",
                                 help="atoms closer than this form one cluster; default: 2 x min_separation_nm"),
}

SAM_PARAMS = {
    "checkpoint": Param(None, str, help="path to a SAM vit_b/l/h .pth or .safetensors; "
                                        "default: $EMCOPILOT_SAM_CHECKPOINT"),
    "device": Param("auto", str, help="auto (CUDA when available), cpu or cuda[:N]"),
    "contrast": _CONTRAST,
    "min_diameter_nm": _MIN_DIAMETER,
    "max_diameter_nm": _MAX_DIAMETER,
    "object_px_in_model": Param(48.0, float, min=8.0, max=512.0, unit="px",
                                help="tiles are cut so that a typical object spans this many SAM input pixels"),
    "points_per_side": Param(32, int, min=1, max=128, help="automatic mask generation: prompt grid per tile side"),
    "points_per_batch": Param(64, int, min=1, max=4096),
    "pred_iou_thresh": Param(0.8, float, min=0.0, max=1.0, help="SAM's predicted-IoU threshold"),
    "stability_score_thresh": Param(0.9, float, min=0.0, max=1.0, help="SAM's stability-score threshold"),
    "min_contrast_snr": Param(1.0, float, min=0.0,
                              help="object mean minus the mean of a ring around it, in units of background noise"),
    "min_solidity": Param(0.75, float, min=0.0, max=1.0, help="masks less convex than this are dropped"),
    "max_area_fraction": Param(0.25, float, min=0.0, max=1.0,
                               help="a mask larger than this fraction of the image is support, not an object"),
    "recover_missed": Param(True, bool, help="prompt SAM with points at blobs that no mask covers"),
    "recovery_snr": Param(4.0, float, min=0.0, help="blob peaks above this many noise units are recovery prompts"),
    "max_recovery_prompts": Param(500, int, min=0, max=100_000, help="at most this many recovery prompts per image"),
}


def make_classical(params, sample):
    from .classical import ClassicalExtractor
    return ClassicalExtractor(params, sample)


def make_atoms(params, sample):
    from .atoms import AtomExtractor
    return AtomExtractor(params, sample)


def make_sam(params, sample):
    from .sam import SamExtractor
    return SamExtractor(params, sample)


@hookimpl
def register_prior_extractors(register):
    register("sam", make_sam, params=SAM_PARAMS,
             description="Segment Anything automatic masks on object-sized tiles, EM false-positive filters, "
                         "point-prompt recovery of missed blobs (needs a checkpoint file)")
    register("atoms", make_atoms, params=ATOMS_PARAMS,
             description="single atoms and sub-nm clusters: difference-of-Gaussians peaks above the local noise")
    register("classical", make_classical, params=CLASSICAL_PARAMS,
             description="top-hat background, threshold and distance-transform watershed (scikit-image)")
