"""Image-quality metrics: ``ssim``, ``psnr``, ``lpips`` and ``realism-gap``.

``ssim``, ``psnr`` and ``lpips`` compare paired images (a synthetic image
rendered from the label map of a real one, and that real image): call the
metric with two arrays, or two equal-length sequences of arrays, and get the
mean over pairs. ``realism-gap`` compares two *unpaired sets* of images
(synthetic vs real) without any learned network, so it needs no download.

SSIM and PSNR are scikit-image's; LPIPS is the ``lpips`` package, whose
ImageNet backbone must already be in the torch hub cache (nothing is ever
downloaded, and random backbone weights are never used in its place).

By default every image is first mapped to *normalised intensity*: the 1st
percentile of its own pixels goes to 0 and the 99th to 1 (linear, nothing is
clipped). Synthetic images come in arbitrary units (an analytic renderer's
counts, a generator's output), so the comparison is about contrast and
structure, not detector gain and offset. Pass ``normalize: false`` to compare
raw values (then set ``data_range``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emcopilot import Param, hookimpl
from emcopilot.core.errors import CheckpointError, InputError

#: Percentiles mapped to 0 and 1 by the intensity normalisation.
NORMALISE_PERCENTILES = (1.0, 99.0)

_NORMALIZE = Param(True, bool, help="map each image's 1st..99th intensity percentile to 0..1 first "
                                    "(linear, no clipping); data_range is then 1")
_DATA_RANGE = Param(None, float, min=0.0, help="intensity range for SSIM/PSNR when normalize is false "
                                               "(default: max - min of each real image)")


# --------------------------------------------------------------------------- helpers

def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Linear map of the 1st..99th percentile to 0..1 (no clipping).

    A flat image (both percentiles equal) is only shifted: its spread stays 0.
    """
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, NORMALISE_PERCENTILES)
    spread = high - low
    return (image - low) / spread if spread > 0 else image - low


def _pixels(value: Any) -> Any:
    """The pixels of a Micrograph, or the value itself (arrays have a ``.data`` buffer too)."""
    return value if isinstance(value, (np.ndarray, list, tuple)) else getattr(value, "data", value)


def _as_image(value: Any, what: str) -> np.ndarray:
    image = np.asarray(_pixels(value))
    if image.ndim != 2 or image.size == 0:
        raise InputError(f"{what}: expected a 2-D image, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise InputError(f"{what}: pixel type {image.dtype} is not a real-valued image")
    image = image.astype(np.float64)
    if not np.isfinite(image).all():
        raise InputError(f"{what}: {int((~np.isfinite(image)).sum())} pixels are NaN or infinite")
    return image


def _as_images(value: Any, what: str) -> list[np.ndarray]:
    """One image (2-D array or Micrograph) or a sequence of them -> list of float64 arrays."""
    data = _pixels(value)
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return [_as_image(data, what)]
    if isinstance(data, np.ndarray) and data.ndim == 3:
        return [_as_image(frame, f"{what}[{index}]") for index, frame in enumerate(data)]
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{what}: no images given")
        return [_as_image(item, f"{what}[{index}]") for index, item in enumerate(value)]
    raise InputError(f"{what}: expected an image or a sequence of images, got {type(value).__name__}")


def _pairs(prediction: Any, truth: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    predictions = _as_images(prediction, "prediction")
    truths = _as_images(truth, "truth")
    if len(predictions) != len(truths):
        raise InputError(f"{len(predictions)} predicted images but {len(truths)} true images; "
                         "paired metrics need one prediction per real image")
    for index, (pred, real) in enumerate(zip(predictions, truths)):
        if pred.shape != real.shape:
            raise InputError(f"pair {index}: prediction is {pred.shape} but truth is {real.shape}")
    return list(zip(predictions, truths))


def _prepared(pred: np.ndarray, real: np.ndarray, normalize: bool, data_range: float | None):
    if normalize:
        return normalise_intensity(pred), normalise_intensity(real), 1.0
    span = data_range if data_range is not None else float(real.max() - real.min())
    if span <= 0:
        raise InputError("data_range is 0 (the real image is flat); set the metric's data_range parameter")
    return pred, real, span


# --------------------------------------------------------------------------- ssim / psnr

class SSIM:
    """Structural similarity (Wang et al., IEEE TIP 13, 600, 2004), scikit-image implementation."""

    def __init__(self, normalize: bool = True, data_range: float | None = None, window_px: int = 7,
                 gaussian_weights: bool = True):
        self.normalize, self.data_range = normalize, data_range
        self.window_px, self.gaussian_weights = window_px, gaussian_weights

    def __call__(self, prediction: Any, truth: Any) -> dict[str, float]:
        from skimage.metrics import structural_similarity

        values = []
        for pred, real in _pairs(prediction, truth):
            window_px = 11 if self.gaussian_weights else self.window_px  # sigma 1.5, truncated at 3.5 sigma
            if min(real.shape) < window_px:
                raise InputError(f"images of {real.shape} px are smaller than the SSIM window ({window_px} px)")
            pred, real, span = _prepared(pred, real, self.normalize, self.data_range)
            # gaussian_weights with sigma 1.5 is the setting of Wang et al. (2004)
            values.append(structural_similarity(real, pred, data_range=span, win_size=None if
                                                self.gaussian_weights else self.window_px,
                                                gaussian_weights=self.gaussian_weights, sigma=1.5,
                                                use_sample_covariance=not self.gaussian_weights))
        return {"ssim": float(np.mean(values)), "ssim_std": float(np.std(values)), "pairs": float(len(values))}


class PSNR:
    """Peak signal-to-noise ratio in dB, scikit-image implementation."""

    def __init__(self, normalize: bool = True, data_range: float | None = None):
        self.normalize, self.data_range = normalize, data_range

    def __call__(self, prediction: Any, truth: Any) -> dict[str, float]:
        from skimage.metrics import peak_signal_noise_ratio

        values = []
        for pred, real in _pairs(prediction, truth):
            pred, real, span = _prepared(pred, real, self.normalize, self.data_range)
            if np.array_equal(pred, real):
                raise InputError("PSNR is infinite for identical images")
            values.append(peak_signal_noise_ratio(real, pred, data_range=span))
        return {"psnr_dB": float(np.mean(values)), "psnr_dB_std": float(np.std(values)),
                "pairs": float(len(values))}


# --------------------------------------------------------------------------- lpips

#: torchvision weights behind each LPIPS backbone (the file names in the hub cache).
_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def lpips_backbone_file(net: str) -> Path:
    """Where torchvision looks for the ImageNet weights of an LPIPS backbone."""
    import torch
    import torchvision.models as models

    weights = getattr(models, _LPIPS_BACKBONES[net]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


class LPIPS:
    """Learned perceptual image patch similarity (Zhang et al., CVPR 2018), the ``lpips`` package.

    Lower is more similar. Grey images are repeated into three channels and
    scaled to [-1, 1] (0..1 normalised intensity -> -1..1, as the package expects).
    """

    def __init__(self, net: str = "alex", normalize: bool = True, data_range: float | None = None,
                 device: str = "cpu"):
        backbone = lpips_backbone_file(net)
        if not backbone.is_file():
            raise CheckpointError(
                f"LPIPS ({net}) needs the ImageNet weights of its torchvision backbone at {backbone}, which is "
                "missing, and they cannot be downloaded here. Copy that file into place (or point TORCH_HOME "
                "at a cache that has it); LPIPS is never computed with random backbone weights.")
        import lpips

        self.normalize, self.data_range, self.device = normalize, data_range, device
        self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False).to(device).eval()

    def __call__(self, prediction: Any, truth: Any) -> dict[str, float]:
        import torch

        values = []
        for pred, real in _pairs(prediction, truth):
            pred, real, span = _prepared(pred, real, self.normalize, self.data_range)
            low = 0.0 if self.normalize else float(real.min())
            tensors = [torch.as_tensor((image - low) / span * 2.0 - 1.0, dtype=torch.float32)
                       .expand(1, 3, *image.shape).to(self.device) for image in (pred, real)]
            with torch.no_grad():
                values.append(float(self.model(*tensors).mean()))
        return {"lpips": float(np.mean(values)), "lpips_std": float(np.std(values)), "pairs": float(len(values))}


# --------------------------------------------------------------------------- realism gap

def radial_power_spectrum(image: np.ndarray, bins: int) -> np.ndarray:
    """log10 of the radially averaged power spectrum on ``bins`` frequency bins in (0, 0.5] cycles/px.

    The image is mean-subtracted and Hann-windowed (against edge leakage); the
    power is normalised by the window energy so that images of different sizes
    compare (periodogram, e.g. Press et al., Numerical Recipes, 13.4).
    """
    image = image - image.mean()
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    power = np.abs(np.fft.fft2(image * window)) ** 2 / np.sum(window ** 2)
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]),
                                      indexing="ij"))
    edges = np.linspace(0.0, 0.5, bins + 1)
    index = np.digitize(frequency.ravel(), edges[1:], right=True)  # bin k holds (edges[k], edges[k+1]]
    keep = (frequency.ravel() > 0) & (index < bins)
    sums = np.bincount(index[keep], weights=power.ravel()[keep], minlength=bins)
    counts = np.bincount(index[keep], minlength=bins)
    if (counts == 0).any():
        raise InputError(f"image of {image.shape} px is too small for {bins} spectrum bins")
    return np.log10(sums / counts + 1e-12)


def local_noise(image: np.ndarray, highpass_sigma_px: float, window_px: int) -> np.ndarray:
    """log10 of the local standard deviation of the high-pass residual, per pixel.

    Residual = image - Gaussian(image, sigma); its RMS in a ``window_px`` box is
    the local noise (plus fine texture) level.
    """
    from scipy.ndimage import gaussian_filter, uniform_filter

    residual = image - gaussian_filter(image, highpass_sigma_px)
    variance = np.maximum(uniform_filter(residual ** 2, size=window_px), 0.0)
    return np.log10(np.sqrt(variance) + 1e-4).ravel()


class RealismGap:
    """Distance between a set of synthetic and a set of real images; no learned network.

    Components (each 0 for identical sets):

    - ``spectrum``: mean absolute difference, in decades, of the set-averaged
      log10 radially averaged power spectra;
    - ``histogram``: 1-D Wasserstein distance between pooled intensities;
    - ``noise``: 1-D Wasserstein distance, in decades, between pooled log10
      local noise levels (:func:`local_noise`).

    ``realism_gap`` is their weighted sum.
    """

    def __init__(self, normalize: bool = True, spectrum_bins: int = 32, highpass_sigma_px: float = 2.0,
                 noise_window_px: int = 8, max_samples: int = 200_000, weight_spectrum: float = 1.0,
                 weight_histogram: float = 1.0, weight_noise: float = 1.0, seed: int = 0):
        self.normalize, self.spectrum_bins = normalize, spectrum_bins
        self.highpass_sigma_px, self.noise_window_px = highpass_sigma_px, noise_window_px
        self.max_samples, self.seed = max_samples, seed
        self.weights = {"spectrum": weight_spectrum, "histogram": weight_histogram, "noise": weight_noise}

    def _statistics(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        per_image = max(1, self.max_samples // len(images))
        spectra, intensities, noise = [], [], []
        for image in images:
            image = normalise_intensity(image) if self.normalize else image
            spectra.append(radial_power_spectrum(image, self.spectrum_bins))
            intensities.append(_subsample(image.ravel(), per_image, rng))
            noise.append(_subsample(local_noise(image, self.highpass_sigma_px, self.noise_window_px),
                                    per_image, rng))
        return np.mean(spectra, axis=0), np.concatenate(intensities), np.concatenate(noise)

    def __call__(self, prediction: Any, truth: Any) -> dict[str, float]:
        from scipy.stats import wasserstein_distance

        synthetic, real = _as_images(prediction, "synthetic images"), _as_images(truth, "real images")
        smallest = min(min(image.shape) for image in synthetic + real)
        if smallest < 2 * self.spectrum_bins:
            raise InputError(f"realism-gap needs images of at least {2 * self.spectrum_bins} px per side "
                             f"(2 x spectrum_bins); the smallest given is {smallest} px")
        spectrum_s, intensity_s, noise_s = self._statistics(synthetic)
        spectrum_r, intensity_r, noise_r = self._statistics(real)
        components = {
            "spectrum": float(np.mean(np.abs(spectrum_s - spectrum_r))),
            "histogram": float(wasserstein_distance(intensity_s, intensity_r)),
            "noise": float(wasserstein_distance(noise_s, noise_r)),
        }
        total = sum(self.weights[name] * value for name, value in components.items())
        return {"realism_gap": float(total), **{f"realism_gap_{name}": value for name, value in components.items()}}


def _subsample(values: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= count:
        return values
    return values[rng.choice(values.size, size=count, replace=False)]


# --------------------------------------------------------------------------- registration

@hookimpl
def register_metrics(register):
    register("ssim", lambda params, sample: SSIM(**params), params={
        "normalize": _NORMALIZE, "data_range": _DATA_RANGE,
        "window_px": Param(7, int, min=3, unit="px", help="window side when gaussian_weights is false (odd)"),
        "gaussian_weights": Param(True, bool, help="Gaussian window, sigma 1.5 px (Wang et al. 2004)"),
    }, compares="image pairs",
        description="structural similarity of paired images (scikit-image); higher is better, 1 = identical")
    register("psnr", lambda params, sample: PSNR(**params), params={
        "normalize": _NORMALIZE, "data_range": _DATA_RANGE,
    }, compares="image pairs", description="peak signal-to-noise ratio of paired images in dB (scikit-image); "
                                           "higher is better")
    register("lpips", lambda params, sample: LPIPS(**params), params={
        "net": Param("alex", str, choices=tuple(_LPIPS_BACKBONES), help="backbone network"),
        "normalize": _NORMALIZE, "data_range": _DATA_RANGE,
        "device": Param("cpu", str, help="torch device"),
    }, compares="image pairs",
        description="learned perceptual distance of paired images (lpips package; backbone weights must be "
                    "in the torch hub cache); lower is better")
    register("realism-gap", lambda params, sample: RealismGap(**params), params={
        "normalize": _NORMALIZE,
        "spectrum_bins": Param(32, int, min=4, max=1024, help="radial frequency bins in (0, 0.5] cycles/px"),
        "highpass_sigma_px": Param(2.0, float, min=0.3, unit="px", help="Gaussian sigma of the high-pass"),
        "noise_window_px": Param(8, int, min=2, unit="px", help="box side of the local noise estimate"),
        "max_samples": Param(200_000, int, min=1000, help="pixels sampled per set for the distributions"),
        "weight_spectrum": Param(1.0, float, min=0.0), "weight_histogram": Param(1.0, float, min=0.0),
        "weight_noise": Param(1.0, float, min=0.0),
        "seed": Param(0, int, min=0, help="seed of the pixel subsampling"),
    }, compares="image sets",
        description="download-free distance between synthetic and real image sets: power spectra, "
                    "intensity histograms, local noise; lower is better, 0 = same statistics")
