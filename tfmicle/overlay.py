"""Explanation overlays: a Grad-CAM heatmap [h, w] in [0, 1] over the image the model
saw (the exported signature ``serving_explain`` returns both), as a PNG, and the
heatmap's peak. Serving (``POST /classify?explain=1``) returns the blend
(``overlay_png``); ``tfmicle.score --explain`` draws the input beside a lighter blend
with the map's outline (``side_by_side_png``); numpy and Pillow only, no TensorFlow.
Map: docs/architecture.md."""
from __future__ import annotations

import io

import numpy as np

OVERLAY_ALPHA = 0.45  # heatmap weight in the blend: the image stays readable beneath it
MIN_SIDE = 160        # small model inputs (32 px) are upscaled so the overlay is legible
PANEL_ALPHA = 0.3     # lighter beside the plain input: the lesion shows through the colour
CONTOUR_LEVEL = 0.5   # the outline marks where the heatmap reaches half its maximum
CONTOUR_RGB = (255, 255, 255)
PANEL_GAP = 4         # white pixels between the input and the overlay


def colormap(heat: np.ndarray) -> np.ndarray:
    """[h, w] in [0, 1] -> uint8 [h, w, 3]: a blue-cyan-yellow-red ramp (a piecewise
    linear "jet"), so hot regions read as red whatever the image's colours."""
    h = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * h - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * h - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * h - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def peak(heat: np.ndarray) -> tuple[int, int]:
    """(row, col) of the heatmap's maximum (the first one in row-major order)."""
    h = np.asarray(heat)
    r, c = np.unravel_index(int(np.argmax(h)), h.shape)
    return int(r), int(c)


def overlay(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """pixels [h, w, 3] (float in [0, 1] or uint8) blended with the coloured heatmap
    [h, w] -> uint8 [h, w, 3]."""
    px = np.asarray(pixels)
    px = px.astype(np.float64) / 255.0 if px.dtype == np.uint8 else px.astype(np.float64)
    if px.shape[:2] != np.shape(heat):
        raise ValueError(f"pixels {px.shape} and heatmap {np.shape(heat)} differ in size")
    col = colormap(heat).astype(np.float64) / 255.0
    out = (1 - alpha) * np.clip(px, 0, 1) + alpha * col
    return (out * 255).round().astype(np.uint8)


def _upscale(img: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor to at least min_side pixels."""
    scale = max(1, -(-min_side // max(1, min(img.shape[:2]))))
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def contour(mask: np.ndarray) -> np.ndarray:
    """The inner boundary of a boolean mask: its pixels with a 4-neighbour outside it
    (the image border counts as outside)."""
    m = np.pad(np.asarray(mask, bool), 1)
    inside = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m[1:-1, 1:-1] & ~inside


def side_by_side(pixels: np.ndarray, heat: np.ndarray, alpha: float = PANEL_ALPHA,
                 level: float = CONTOUR_LEVEL, min_side: int = MIN_SIDE) -> np.ndarray:
    """uint8 [S, 2 S + PANEL_GAP, 3]: the input as the model saw it (left) and the heatmap
    blended at alpha with an outline where it reaches ``level`` x its maximum (right),
    each upscaled (nearest) to at least min_side pixels. The plain input keeps the lesion
    readable however hot the map is over it."""
    px = np.asarray(pixels)
    px = px.astype(np.float64) / 255.0 if px.dtype == np.uint8 else px.astype(np.float64)
    plain = (np.clip(px, 0, 1) * 255).round().astype(np.uint8)
    left = _upscale(plain, min_side)
    right = _upscale(overlay(pixels, heat, alpha), min_side)
    h = np.asarray(heat, dtype=np.float64)
    top = float(h.max()) if h.size else 0.0
    if top > 0:   # an all-zero map has no region to outline
        right[contour(_upscale(h >= level * top, min_side))] = CONTOUR_RGB
    gap = np.full((left.shape[0], PANEL_GAP, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def side_by_side_png(pixels: np.ndarray, heat: np.ndarray, alpha: float = PANEL_ALPHA,
                     level: float = CONTOUR_LEVEL, min_side: int = MIN_SIDE) -> bytes:
    """side_by_side as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(side_by_side(pixels, heat, alpha, level, min_side), "RGB").save(
        buf, format="PNG")
    return buf.getvalue()


def overlay_png(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA,
                min_side: int = MIN_SIDE) -> bytes:
    """The overlay as PNG bytes, upscaled (nearest) to at least min_side pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_upscale(overlay(pixels, heat, alpha), min_side), "RGB").save(
        buf, format="PNG")
    return buf.getvalue()


__all__ = ["OVERLAY_ALPHA", "MIN_SIDE", "PANEL_ALPHA", "CONTOUR_LEVEL", "colormap", "peak",
           "overlay", "overlay_png", "contour", "side_by_side", "side_by_side_png"]
