"""Generator ``pix2pix``: a pixel-level conditional GAN (label map -> clean micrograph).

Registration only; the network code (torch) is imported by the factory. See
:mod:`.model` for what the generator learns and what the physics adapter adds.
"""
from __future__ import annotations

from emcopilot import Param, hookimpl

PARAMS = {
    "width": Param(16, int, min=4, max=256, help="channels of the first U-Net level and of the discriminator's "
                                                  "first layer: 16 trains on a CPU; the pix2pix paper's 64 on a GPU"),
    "depth": Param(4, int, min=1, max=8, help="U-Net downsamplings; crops must be multiples of 2**depth px"),
    "norm": Param("batch", str, choices=("batch", "instance", "none"), help="normalisation layers"),
    "discriminator": Param("patch", str, choices=("patch", "pixel"),
                           help="patch: 70x70 PatchGAN; pixel: per-pixel 1x1 discriminator"),
    "gan_loss": Param("lsgan", str, choices=("lsgan", "bce"), help="adversarial loss"),
    "lambda_l1": Param(100.0, float, min=0.0, help="weight of the L1 loss (pix2pix: 100)"),
    "lambda_ssim": Param(0.0, float, min=0.0, help="weight of the 1 - SSIM loss (0 = off)"),
    "learning_rate": Param(2e-4, float, min=1e-7, max=1.0, help="Adam learning rate (betas 0.5, 0.999)"),
    "boundary_channel": Param(True, bool, help="condition on object boundaries too"),
    "thickness_channel": Param(True, bool, help="condition on each object's relative projected thickness "
                                                "(sphere model, from the label map)"),
    "noise_channel": Param(False, bool, help="add a Gaussian noise input channel"),
    "validate_every": Param(100, int, min=1, help="validation interval in training steps"),
    "validation_crops": Param(32, int, min=1, max=4096, help="held-back crops scored at each validation"),
    "holdout_fraction": Param(0.2, float, min=0.0, max=0.9,
                              help="bottom fraction of each image's rows held back for validation "
                                   "(at least one crop)"),
    "select_by": Param("ssim", str, choices=("ssim", "psnr", "lpips", "realism-gap"),
                       help="validation metric that chooses the kept generator"),
}


def make_pix2pix(params, sample):
    from .model import Pix2Pix
    return Pix2Pix(params, sample)


@hookimpl
def register_generators(register):
    register("pix2pix", make_pix2pix, params=PARAMS, description=(
        "pixel-level conditional GAN (pix2pix): U-Net generator, PatchGAN or per-pixel discriminator, "
        "LSGAN/BCE + L1 (+ SSIM); learns contrast and support texture from (prior mask, real image) pairs; "
        "keeps the best checkpoint by SSIM, PSNR, LPIPS and realism gap"))
