"""Overlapping tiles that cover a frame with few pixels computed twice, and their blending window."""
from __future__ import annotations

import math

import numpy as np


def blend_window(size: int, overlap: int) -> np.ndarray:
    """1-D blending weight: a raised-cosine ramp over ``overlap`` pixels at each side, never zero."""
    weight = np.ones(size, np.float32)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        weight[:overlap] = ramp
        weight[size - overlap:] = np.minimum(weight[size - overlap:], ramp[::-1])
    return np.maximum(weight, 1e-3)


def tile_side(length: int, largest: int, overlap: int, multiple: int) -> int:
    """The least tile side, a multiple of ``multiple`` and at most ``largest``, that covers ``length``
    in as few tiles (overlapping by ``overlap``) as ``largest`` would: with tiles of at most 512 px
    and 32 px of overlap a 1024 px side takes three tiles of 368, not three of 512, and the network
    sees 8 %, not 50 %, more pixels than the image has."""
    if length <= largest:
        return math.ceil(length / multiple) * multiple
    count = math.ceil((length - overlap) / (largest - overlap))
    side = math.ceil(((length - overlap) / count + overlap) / multiple) * multiple
    return min(largest, side)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Where tiles of ``tile`` px start along a side of ``length`` px, ``stride`` apart, the last flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def pad_to(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``array`` padded at its bottom and right to at least ``shape`` (mirrored, so a tile's edge looks like an image)."""
    pad = [(0, max(0, shape[0] - array.shape[-2])), (0, max(0, shape[1] - array.shape[-1]))]
    if not any(p[1] for p in pad):
        return array
    pad = [(0, 0)] * (array.ndim - 2) + pad
    mode = "reflect" if all(p[1] < s for p, s in zip(pad[-2:], array.shape[-2:])) else "symmetric"
    return np.pad(array, pad, mode=mode)


#: Bytes a particle frame takes while it is segmented, per pixel of the working grid (the normalised
#: image, the two probability maps, the blob and seed labels of the flood, the label image) and per
#: pixel of the micrograph's own grid (its labels there, the table's region properties); from peak RSS
#: of ``emcopilot segment`` on 4096² and 8192² frames, with a margin.
WORKING_BYTES_PER_PX = 40
ORIGINAL_BYTES_PER_PX = 12


def available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (Linux ``MemAvailable``), else ``None``."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(name: str, original_shape: tuple[int, int], working_shape: tuple[int, int],
                 available: int | None = None) -> None:
    """Refuse a frame that would not fit in the memory left, naming it, before any of it is computed
    (an out-of-memory kill would lose the rest of the batch)."""
    from emcopilot.core.errors import InputError

    available = available_memory_bytes() if available is None else available
    if available is None:
        return
    need = (WORKING_BYTES_PER_PX * working_shape[0] * working_shape[1]
            + ORIGINAL_BYTES_PER_PX * original_shape[0] * original_shape[1])
    if need > available:
        raise InputError(f"{name}: segmenting this {original_shape[1]}x{original_shape[0]} frame "
                         f"({working_shape[1]}x{working_shape[0]} at the working scale) needs about "
                         f"{need / 2**30:.1f} GiB of memory and {available / 2**30:.1f} GiB is available; "
                         f"crop or bin it, or use fewer --workers")
