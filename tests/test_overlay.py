"""Explanation pieces without a model: the overlay PNG and peak (tfmicle.overlay), the
choice of the most confident errors / correct predictions (score --explain), and the
receptive-field-aligned upsampling of Grad-CAM maps. Fast."""
import io

import numpy as np
import pytest
from PIL import Image

from tfmicle.overlay import (CONTOUR_RGB, PANEL_GAP, colormap, overlay, overlay_png, peak,
                             side_by_side, side_by_side_png)
from tfmicle.score.explain import select


def test_overlay_blend_peak_and_png_round_trip():
    pixels = np.full((8, 8, 3), 0.5)
    heat = np.zeros((8, 8))
    heat[5, 2] = 1.0
    assert peak(heat) == (5, 2)
    out = overlay(pixels, heat, alpha=0.4)
    # 0.6 * grey + 0.4 * colour; the hottest cell is red, a cold one blue
    want_hot = np.round((0.6 * 0.5 + 0.4 * np.array([0.5, 0, 0])) * 255)
    assert out[5, 2].tolist() == want_hot.tolist()
    assert colormap(np.array([[1.0]]))[0, 0].tolist() == [128, 0, 0]
    assert colormap(np.array([[0.0]]))[0, 0].tolist() == [0, 0, 128]
    png = Image.open(io.BytesIO(overlay_png(pixels, heat, alpha=0.4, min_side=32)))
    assert png.format == "PNG" and png.size == (32, 32)
    # nearest upscaling by 4: the hot pixel becomes a 4 x 4 block
    arr = np.asarray(png)
    assert (arr[20:24, 8:12] == out[5, 2]).all()
    with pytest.raises(ValueError):
        overlay(pixels, np.zeros((4, 4)))


def test_side_by_side_keeps_the_input_and_outlines_the_hot_region():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    heat = np.zeros((8, 8))
    heat[2:5, 3:6] = 1.0                       # a 3 x 3 hot block, its centre (3, 4)
    got = side_by_side(pixels, heat, alpha=0.3, min_side=16)   # upscaled by 2
    assert got.shape == (16, 2 * 16 + PANEL_GAP, 3)
    # left: the input itself, untouched by the heatmap
    assert (got[:, :16] == np.repeat(np.repeat(pixels, 2, 0), 2, 1)).all()
    assert (got[:, 16:16 + PANEL_GAP] == 255).all()
    right = got[:, 16 + PANEL_GAP:]
    blend = np.repeat(np.repeat(overlay(pixels, heat, 0.3), 2, 0), 2, 1)
    outline = np.zeros((16, 16), bool)
    outline[4:10, 6:12] = True
    outline[5:9, 7:11] = False                 # the block's one-pixel inner boundary
    assert (right[outline] == CONTOUR_RGB).all()
    assert (right[~outline] == blend[~outline]).all()
    png = Image.open(io.BytesIO(side_by_side_png(pixels, heat, min_side=16)))
    assert png.format == "PNG" and png.size == (2 * 16 + PANEL_GAP, 16)
    # an all-zero map: nothing outlined
    flat = side_by_side(pixels, np.zeros((8, 8)), alpha=0.3, min_side=16)[:, 16 + PANEL_GAP:]
    assert (flat == np.repeat(np.repeat(overlay(pixels, np.zeros((8, 8)), 0.3), 2, 0), 2,
                              1)).all()


def test_select_most_confident_errors_and_correct_multiclass():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.95, 0.05],
                      [0.5, 0.5]])
    labels = np.array([1, 1, 1, 0, 0, -1])  # errors: rows 0 (0.9), 2 (0.6), 3 (0.7)
    got = select("multiclass", probs, labels, 2)
    assert [(g["kind"], g["row"], g["class"]) for g in got] == [
        ("error", 0, 0), ("error", 3, 1), ("correct", 4, 0), ("correct", 1, 1)]
    assert got[0]["confidence"] == pytest.approx(0.9)


def test_select_multilabel_decisions():
    probs = np.array([[0.9, 0.2], [0.4, 0.99]])
    labels = np.array([[0, np.nan], [0, -1]])
    # definite: (0, 0) p .9 y 0 -> error (conf .9); (1, 0) p .4 y 0 -> correct (conf .6)
    got = select("multilabel", probs, labels, 3)
    assert [(g["kind"], g["row"], g["class"]) for g in got] == [("error", 0, 0),
                                                                ("correct", 1, 0)]
    assert got[1]["confidence"] == pytest.approx(0.6)


def test_upsampling_matrix_interpolates_between_centres():
    from tfmicle.models.gradcam import upsampling_matrix
    m = upsampling_matrix(np.array([2.0, 10.0]), 12)
    # constant before the first and after the last centre, linear between
    np.testing.assert_allclose(m[:3], [[1, 0]] * 3)
    np.testing.assert_allclose(m[6], [0.5, 0.5])
    np.testing.assert_allclose(m[10:], [[0, 1]] * 2)
    np.testing.assert_allclose(m.sum(1), 1.0)
