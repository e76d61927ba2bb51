"""Built-in segmenters: ``unet`` (PyTorch) and ``classical`` (the classical prior extractor as a baseline).

Registration only: torch and scikit-image are imported by the factories.
"""
from __future__ import annotations

from emcopilot import Param, hookimpl

UNET_PARAMS = {
    "mode": Param("auto", str, choices=("auto", "particles", "atoms"),
                  help="particles: foreground + distance map -> watershed; atoms: heatmap -> peaks; "
                       "auto: atoms for sample.kind 'atoms', else particles (clusters are outlined)"),
    "depth": Param(3, int, min=1, max=6, help="number of 2x poolings"),
    "width": Param(16, int, min=2, max=256, help="channels of the first level (doubling per level)"),
    "learning_rate": Param(2e-3, float, min=1e-6, max=1.0),
    "foreground_loss_weight": Param(1.0, float, min=0.0, help="weight of the foreground BCE (particles)"),
    "dice_loss_weight": Param(1.0, float, min=0.0, help="weight of the foreground soft-Dice loss (particles)"),
    "distance_loss_weight": Param(1.0, float, min=0.0, help="weight of the distance-map BCE (particles)"),
    "heatmap_loss_weight": Param(1.0, float, min=0.0, help="weight of the heatmap MSE (atoms)"),
    "heatmap_positive_weight": Param(5.0, float, min=0.0,
                                     help="extra MSE weight on atom pixels: 1 + w * target (atoms are sparse)"),
    "self_training": Param(0.0, float, min=0.0, max=10.0,
                           help="after training on synthetic images, fine-tune on the real micrographs for this "
                                "share of the training steps more: the network's own confident objects and "
                                "background as targets, uncertain pixels ignored, every batch half real and half "
                                "synthetic (particles and clusters; 0: off)"),
    "self_training_ignore_below": Param(0.1, float, min=0.0, max=1.0,
                                        help="self-training: pixels outside the network's objects count as "
                                             "background only where its foreground probability is below this; "
                                             "between it and the objects they are ignored"),
    "augment_flips": Param(True, bool, help="random flips and 90-degree rotations"),
    "intensity_jitter": Param(0.2, float, min=0.0, max=1.0, help="random gain and offset (normalised units)"),
    "gamma_jitter": Param(0.3, float, min=0.0, max=2.0, help="random gamma: exp(U(-g, g))"),
    "noise_std": Param(0.05, float, min=0.0, help="largest std of added Gaussian noise (normalised units)"),
    "scale_jitter": Param(0.15, float, min=0.0, max=0.5, help="random zoom of crops: factor in [1-s, 1+s]"),
    "normalise_percentiles": Param([1.0, 99.5], list, items=float, unit="%",
                                   help="per-image intensity percentiles mapped to 0 and 1"),
    "background_nm": Param(None, float, min=0.0, unit="nm",
                           help="subtract a Gaussian background of this width before normalising (atoms on an "
                                "uneven support: a few atom widths); none by default"),
    "invert_dark_objects": Param(True, bool, help="invert images whose objects are darker than the support "
                                                  "(sample.particle_contrast: dark) so the network sees bright objects"),
    "tile_px": Param(512, int, min=16, max=8192, unit="px",
                     help="largest inference tile side (working grid); tiles are sized to cover the frame "
                          "with the least overlap"),
    "tile_overlap_px": Param(32, int, min=0, max=4096, unit="px", help="overlap of neighbouring tiles, blended"),
    "test_time_flips": Param(1, int, choices=(1, 2, 4, 8),
                             help="average the network over this many flips/quarter turns of each tile (1: none)"),
    "tile_batch": Param(4, int, min=1, max=1024, help="tiles per forward pass"),
    "device": Param("auto", str, help="auto (CUDA when available), cpu, cuda or cuda:N (inference)"),
    "foreground_threshold": Param(0.5, float, min=0.0, max=1.0, help="foreground probability of a particle pixel"),
    "seed_dynamic": Param(None, float, min=0.0, max=1.0,
                          help="least dynamic (depth to the saddle towards a higher maximum) of a maximum of the "
                               "normalised distance map that seeds a particle (h-maxima watershed markers; 0 with "
                               "seed_threshold 0.7: fixed-level seeds; 1: one object per connected region); "
                               "default 0.2, and 1 for sample.kind 'clusters', whose distance map peaks at "
                               "every atom"),
    "seed_threshold": Param(0.0, float, min=0.0, max=1.0,
                            help="least normalised distance of a seed (0: any maximum of enough dynamic)"),
    "grow_nm": Param(0.0, float, min=0.0, unit="nm",
                     help="grow each particle outward by this much after the watershed, never into a neighbour "
                          "(the network's edge lies inside the blurred rim that outlines and boxes drawn by hand "
                          "include)"),
    "min_score": Param(0.0, float, min=0.0, max=1.0,
                       help="drop particles whose mean foreground probability (before growing) is below this"),
    "rescan_scales": Param([], list, items=float,
                           help="particles and clusters: segment each frame again with its pixel size taken as "
                                "these factors of itself (0.6: the frame shrunk to 0.6x, so particles too large "
                                "for the network at the working scale come into its range) and add the objects "
                                "that overlap none found before (box IoU < 0.1); [] : one pass", inference_only=True),
    "min_diameter_nm": Param(None, float, min=0.0, unit="nm",
                             help="drop particles with a smaller equivalent diameter; default half sample.diameter_nm[0]"),
    "atom_sigma_nm": Param(0.06, float, min=1e-3, unit="nm", help="Gaussian width of an atom in the target heatmap"),
    "peak_threshold": Param(0.5, float, min=0.0, max=1.0, help="least heatmap height of a detected atom",
                            inference_only=True),
    "min_atom_distance_nm": Param(0.15, float, min=0.0, unit="nm", help="least distance between detected atoms",
                                  inference_only=True),
    "atom_position_fit": Param(True, bool,
                               help="refine each atom to a fraction of a pixel by a 2-D Gaussian fitted to the "
                                    "micrograph (the particle table's atom_* columns); false: the heatmap peak",
                               inference_only=True),
    "atom_disk_radius_nm": Param(0.1, float, min=0.0, unit="nm", help="radius of an atom's disk in the label image",
                                 inference_only=True),
    "cluster_distance_nm": Param(None, float, min=0.0, unit="nm",
                                 help="atoms closer than this share one label (a cluster); none: one label per atom",
                                 inference_only=True),
    "cluster_outline": Param("atoms", str, choices=("atoms", "foreground"),
                             help="sample.kind 'clusters': the outline of each detected cluster drawn round the atom "
                                  "peaks inside it (disks of half a bond, gaps closed), or the network's foreground",
                             inference_only=True),
    "cluster_atom_fraction": Param(0.35, float, min=0.0, max=1.0,
                                   help="an atom peak of a cluster rises above the support by at least this share "
                                        "of the cluster's brightest peak", inference_only=True),
    "cluster_atom_fwhm_nm": Param(0.12, float, min=1e-3, unit="nm",
                                  help="image width of one atom (the smoothing before the atom peaks are found)",
                                  inference_only=True),
}


def _unet(params, sample):
    from .unet import UNetSegmenter
    return UNetSegmenter(params, sample)


def _classical(params, sample):
    from .classical import ClassicalSegmenter
    return ClassicalSegmenter(params, sample)


@hookimpl
def register_segmenters(register):
    register("unet", _unet, params=UNET_PARAMS,
             description="U-Net: particles by foreground + distance-map watershed, atoms by heatmap peaks; "
                         "tiled inference at the recipe's working pixel size")
    register("classical", _classical,
             params={"extractor_params": Param({}, dict, help="params of the 'classical' prior extractor")},
             description="the classical prior extractor behind the segmenter interface (baseline; no training)")
