"""Sub-pixel atom positions: a 2-D Gaussian fitted to each atom column in the image.

An atom finder places each atom to within a pixel or so (a heatmap peak, a
local maximum). :func:`fit_gaussians` refines every position on the recorded
intensity with a round Gaussian on a flat local background,

    I(r, c) = b + a * exp(-((r - r0)^2 + (c - c0)^2) / (2 * s^2)),

fitted by least squares in a window of about 2.5 widths round the atom (the
refinement Atomap applies to atomic columns: Nord et al. 2017, Adv. Struct.
Chem. Imaging 3, 9). Pixels nearer another atom than this one are left out of
its window (a Voronoi cell, as Atomap does), so close neighbours do not pull
the fit. All atoms are fitted together, one batched Levenberg-Marquardt
iteration at a time in numpy (Marquardt 1963), which keeps thousands of atoms
well under a second.

A fit is kept only where it is credible: finite, a positive amplitude, a width
within a factor three of the expected one, a centre that moved less than
``max_shift_px`` and at least nine pixels in its window. Elsewhere the finder's
position stands and ``converged`` is false.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))  # 2.3548: FWHM of a Gaussian in units of sigma
#: fewest window pixels for five parameters to be fitted with some redundancy
MIN_WINDOW_PIXELS = 9


@dataclass(frozen=True)
class GaussianFit:
    """Per-atom results of :func:`fit_gaussians`, indexed like the points given.

    ``points`` (N, 2) row/col: the fitted centres where ``converged``, else the
    points given. ``amplitude`` (peak height above ``background``, intensity
    units), ``sigma_px`` (the Gaussian's standard deviation, pixels) and
    ``background``: NaN where not converged.
    """

    points: np.ndarray
    amplitude: np.ndarray
    sigma_px: np.ndarray
    background: np.ndarray
    converged: np.ndarray


def fit_gaussians(image: np.ndarray, points: np.ndarray, sigma_px: float, *, max_shift_px: float = 1.5,
                  iterations: int = 30) -> GaussianFit:
    """Fit a round Gaussian on a flat background to each point of ``image`` (see the module docstring).

    ``sigma_px`` is the expected width (standard deviation) of one atom in pixels: it sets the
    window (radius ``max(2, ceil(2.5 * sigma_px))``), the starting width and the credible range.
    """
    image = np.asarray(image, np.float64)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    count = len(points)
    empty = np.full(count, np.nan)
    if count == 0 or not sigma_px > 0:
        return GaussianFit(points.copy(), empty, empty.copy(), empty.copy(), np.zeros(count, bool))
    radius = max(2, math.ceil(2.5 * sigma_px))
    offsets = np.arange(-radius, radius + 1)
    d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
    d_row, d_col = d_row.ravel(), d_col.ravel()
    centres = np.round(points).astype(np.int64)
    rows = centres[:, :1] + d_row[None]  # (N, M) pixel coordinates of every window
    cols = centres[:, 1:] + d_col[None]
    height, width = image.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    values = image[np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]
    valid = inside & np.isfinite(values) & (d_row ** 2 + d_col ** 2 <= (radius + 0.5) ** 2)[None]
    values = np.where(valid, values, 0.0)
    mask = valid.copy()
    pairs = np.zeros((0, 2), np.int64)
    if count > 1:
        from scipy.spatial import cKDTree
        tree = cKDTree(points)
        # first pass: leave out the pixels nearer another atom (Voronoi cells)
        _, nearest = tree.query(np.stack([rows.ravel(), cols.ravel()], 1).astype(float))
        mask &= nearest.reshape(rows.shape) == np.arange(count)[:, None]
        pairs = tree.query_pairs(2 * radius + 1, output_type="ndarray")
        pairs = np.concatenate([pairs, pairs[:, ::-1]])  # (i, j): j's tail reaches i's window
    # start: the finder's position, the expected width, the window's lower quartile as background
    background0 = np.array([np.percentile(v[m], 25) if m.any() else 0.0 for v, m in zip(values, mask)])
    peak0 = np.where(mask, values, -np.inf).max(1)
    fitted = np.stack([background0, np.maximum(peak0 - background0, 1e-12), points[:, 0] - centres[:, 0],
                       points[:, 1] - centres[:, 1], np.full(count, float(sigma_px))], 1)
    fitted = _levenberg_marquardt(fitted, values, mask.astype(np.float64), d_row.astype(float),
                                  d_col.astype(float), iterations)
    for _ in range(2 if len(pairs) else 0):
        # then the whole window, less the neighbours' fitted Gaussians, so that close atoms are
        # fitted against what they themselves contribute
        others = _neighbour_tails(fitted, centres, pairs, d_row, d_col, sigma_px)
        fitted = _levenberg_marquardt(fitted, np.where(valid, values - others, 0.0), valid.astype(np.float64),
                                      d_row.astype(float), d_col.astype(float), iterations)
    background, amplitude, row0, col0, sigma = fitted.T
    sigma = np.abs(sigma)
    shift = np.hypot(row0 + centres[:, 0] - points[:, 0], col0 + centres[:, 1] - points[:, 1])
    converged = (np.isfinite(fitted).all(1) & (amplitude > 0) & (sigma > sigma_px / 3) & (sigma < 3 * sigma_px)
                 & (shift <= max_shift_px) & (valid.sum(1) >= MIN_WINDOW_PIXELS))
    refined = np.where(converged[:, None], np.stack([row0 + centres[:, 0], col0 + centres[:, 1]], 1), points)
    keep = lambda values_: np.where(converged, values_, np.nan)  # noqa: E731
    return GaussianFit(refined, keep(amplitude), keep(sigma), keep(background), converged)


def _neighbour_tails(params: np.ndarray, centres: np.ndarray, pairs: np.ndarray, d_row: np.ndarray,
                     d_col: np.ndarray, sigma_px: float) -> np.ndarray:
    """(N, M): the other atoms' fitted Gaussians over each atom's window (credible fits only)."""
    count = len(params)
    others = np.zeros((count, len(d_row)))
    if not len(pairs):
        return others
    _, amplitude, row0, col0, sigma = params.T
    sigma = np.abs(sigma)
    usable = np.isfinite(params).all(1) & (amplitude > 0) & (sigma > sigma_px / 3) & (sigma < 3 * sigma_px)
    pairs = pairs[usable[pairs[:, 1]]]
    mine, theirs = pairs[:, 0], pairs[:, 1]
    # their centre relative to my window's centre pixel
    rel_row = row0[theirs] + centres[theirs, 0] - centres[mine, 0]
    rel_col = col0[theirs] + centres[theirs, 1] - centres[mine, 1]
    squared = (d_row[None] - rel_row[:, None]) ** 2 + (d_col[None] - rel_col[:, None]) ** 2
    np.add.at(others, mine, amplitude[theirs, None] * np.exp(-squared / (2 * sigma[theirs, None] ** 2)))
    return others


def _model(params: np.ndarray, d_row: np.ndarray, d_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model (N, M) and its Jacobian (N, M, 5) at ``params`` (N, 5): b, a, r0, c0, s."""
    background, amplitude, row0, col0, sigma = (params[:, i:i + 1] for i in range(5))
    dr, dc = d_row[None] - row0, d_col[None] - col0
    squared = dr ** 2 + dc ** 2
    gauss = np.exp(-squared / (2 * sigma ** 2))
    model = background + amplitude * gauss
    jacobian = np.stack([np.ones_like(gauss), gauss, amplitude * gauss * dr / sigma ** 2,
                         amplitude * gauss * dc / sigma ** 2, amplitude * gauss * squared / sigma ** 3], -1)
    return model, jacobian


def _levenberg_marquardt(params: np.ndarray, values: np.ndarray, weight: np.ndarray, d_row: np.ndarray,
                         d_col: np.ndarray, iterations: int) -> np.ndarray:
    """Weighted least squares for every window at once; each atom keeps its own damping."""
    params = params.copy()
    damping = np.full(len(params), 1e-3)
    model, jacobian = _model(params, d_row, d_col)
    cost = (weight * (values - model) ** 2).sum(1)
    eye = np.eye(params.shape[1])
    for _ in range(iterations):
        residual = weight * (values - model)
        weighted = jacobian * weight[..., None]
        normal = np.einsum("nmi,nmj->nij", weighted, jacobian)
        gradient = np.einsum("nmi,nm->ni", jacobian, residual)
        damped = normal + damping[:, None, None] * (normal * eye).sum(-1)[:, :, None] * eye + 1e-12 * eye
        try:
            step = np.linalg.solve(damped, gradient[..., None])[..., 0]
        except np.linalg.LinAlgError:  # a singular window (e.g. all pixels masked): leave it as it is
            step = np.zeros_like(params)
        trial = params + step
        trial_model, trial_jacobian = _model(trial, d_row, d_col)
        trial_cost = (weight * (values - trial_model) ** 2).sum(1)
        better = np.isfinite(trial_cost) & (trial_cost < cost)
        params[better], model[better], jacobian[better] = trial[better], trial_model[better], trial_jacobian[better]
        cost = np.where(better, trial_cost, cost)
        damping = np.where(better, damping / 3, damping * 4)
        if (np.abs(step[:, 2:4]).max(initial=0.0) < 1e-4) and better.all():
            break
    return params
