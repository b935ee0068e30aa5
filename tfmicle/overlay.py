"""Explanation overlays: a Grad-CAM heatmap [h, w] in [0, 1] over the image the model
saw (the exported signature ``serving_explain`` returns both), as a PNG, and the
heatmap's peak. Used by serving (``POST /classify?explain=1``) and by ``tfmicle.score
--explain``; numpy and Pillow only, no TensorFlow. Map: docs/architecture.md."""
from __future__ import annotations

import io

import numpy as np

OVERLAY_ALPHA = 0.45  # heatmap weight in the blend: the image stays readable beneath it
MIN_SIDE = 160        # small model inputs (32 px) are upscaled so the overlay is legible


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


def overlay_png(pixels: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA,
                min_side: int = MIN_SIDE) -> bytes:
    """The overlay as PNG bytes, upscaled (nearest) to at least min_side pixels."""
    from PIL import Image

    img = Image.fromarray(overlay(pixels, heat, alpha), "RGB")
    scale = max(1, -(-min_side // max(1, min(img.size))))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["OVERLAY_ALPHA", "MIN_SIDE", "colormap", "peak", "overlay", "overlay_png"]
