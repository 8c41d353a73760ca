"""Baselines, metrics and the Laplace solver of maskgit_inpaint on pictures whose right answer is known."""
import numpy as np
import pytest

from common import UserError
from maskgit_inpaint.baselines import BASELINES, fill_baseline
from maskgit_inpaint.blending import harmonic_fill
from maskgit_inpaint.metrics import compute_metrics, psnr_from_mse


def two_colour_picture() -> tuple[np.ndarray, np.ndarray]:
    """A 32x32 picture, left half red, right half blue, with a 6x6 hole inside the left half."""
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, :, :16] = (200, 30, 30)
    image[0, :, 16:] = (20, 40, 220)
    hole = np.zeros((1, 32, 32), bool)
    hole[0, 10:16, 4:10] = True
    return image, hole


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_keep_known_pixels_and_fill_the_hole(method):
    image, hole = two_colour_picture()
    masked = image.copy()
    masked[hole] = 128  # what the hole holds in a masked image: the fill must not use it
    out = fill_baseline(method, masked, hole)
    assert np.array_equal(out[~hole], image[~hole])
    if method == "mean-fill":  # the mean of the known pixels, 1/2 red and 1/2 blue minus the hole
        known = image[~hole].astype(float).mean(0)
        assert np.abs(out[hole].astype(float) - known).max() <= 0.5
    else:  # a hole inside a flat region is filled with that region's colour
        assert np.abs(out[hole].astype(int) - (200, 30, 30)).max() <= 2


def test_nearest_copies_the_closest_known_pixel():
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[0, :, :4] = 50
    image[0, :, 4:] = 250
    hole = np.zeros((1, 8, 8), bool)
    hole[0, 3, 2:6] = True  # columns 2, 3 are nearer the dark side's known pixels above/below
    out = fill_baseline("nearest", image, hole)
    assert (out[0, 3, 2:4] == 50).all() and (out[0, 3, 4:6] == 250).all()


def test_harmonic_fill_reproduces_a_linear_ramp():
    """A linear function is harmonic, so the fill must give it back exactly, also where the hole
    touches the image border (zero slope across it); nearest or OpenCV fills would not."""
    ys, xs = np.mgrid[0:12, 0:10].astype(float)
    values = np.stack([3 * ys + 2 * xs + 5, 40 - 4 * ys], axis=-1)  # (12, 10, 2)
    hole = np.zeros((12, 10), bool)
    hole[3:8, 2:7] = True                # inside the picture: both channels
    filled = harmonic_fill(np.where(hole[..., None], -99.0, values), hole)
    assert np.allclose(filled, values)
    hole[:] = False
    hole[4:9, 0:3] = True                # against the left border: a ramp along the border only
    filled = harmonic_fill(np.where(hole[..., None], -99.0, values[..., 1:]), hole)
    assert np.allclose(filled, values[..., 1:])


def test_harmonic_baseline_is_the_average_of_its_neighbours():
    image = np.zeros((1, 9, 9, 3), np.uint8)
    image[0, :, 5:] = 240
    hole = np.zeros((1, 9, 9), bool)
    hole[0, 4, 4] = True  # one pixel: the mean of its 4 known neighbours, 1 of them bright
    assert (fill_baseline("harmonic", image, hole)[0, 4, 4] == 60).all()


def test_unknown_baseline_and_all_hole():
    image, hole = two_colour_picture()
    with pytest.raises(UserError, match="unknown baseline"):
        fill_baseline("median", image, hole)
    assert np.array_equal(fill_baseline("ns", image, np.ones_like(hole)), image)


def test_metrics_on_a_known_error():
    image, hole = two_colour_picture()
    off = image.copy()
    off[hole] += 10  # every hole value off by 10: hole MSE 100
    metrics = compute_metrics(off, image, hole)
    assert metrics["psnr_hole"] == pytest.approx(psnr_from_mse(100.0)) == pytest.approx(28.1308, abs=1e-4)
    assert metrics["l1_hole"] == pytest.approx(10 / 255)
    assert metrics["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / (100 * 36 / 1024)))
    assert metrics["ssim"] < 1 and compute_metrics(image, image, hole)["ssim"] == pytest.approx(1.0)
