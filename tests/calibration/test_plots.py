"""Tests of mislas_hf.calibration.plots: the saved PNGs and the bars of the reliability diagram."""

import numpy as np
import pytest

from mislas_hf.calibration.metrics import calibration_bins, confidence_and_correctness
from mislas_hf.calibration.plots import draw_reliability_diagram, reliability_diagram


def test_reliability_diagram_png_and_bar_heights(tmp_path, random_predictions, softmax64):
    from matplotlib.figure import Figure

    logits, labels = random_predictions(7)
    confidences, correct = confidence_and_correctness(softmax64(logits), labels)
    path = reliability_diagram(confidences, correct, tmp_path / "diagram.png", title="test")
    assert path == tmp_path / "diagram.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000

    bins = calibration_bins(confidences, correct)
    ax = draw_reliability_diagram(Figure().subplots(), bins)
    accuracy_bars, gap_bars = ax.containers
    heights = np.array([patch.get_height() for patch in accuracy_bars])
    np.testing.assert_allclose(heights, bins.accuracies, rtol=0, atol=1e-12)
    np.testing.assert_allclose([patch.get_x() for patch in accuracy_bars], np.arange(15) / 15, atol=1e-12)
    gap_heights = np.array([patch.get_height() for patch in gap_bars])
    gap_bottoms = np.array([patch.get_y() for patch in gap_bars])
    np.testing.assert_allclose(gap_heights, np.abs(bins.accuracies - bins.confidences), atol=1e-12)
    np.testing.assert_allclose(gap_bottoms, np.minimum(bins.accuracies, bins.confidences), atol=1e-12)
    assert bins.counts[0] == 0 and heights[0] == 0.0 and gap_heights[0] == 0.0  # empty bins draw nothing
    assert f"ECE = {100 * bins.ece:.2f}%" in [text.get_text() for text in ax.texts]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Confidence", "Accuracy")
    assert ax.get_xlim() == (0.0, 1.0) and ax.get_ylim() == (0.0, 1.0)


def test_combine_reliability_diagrams_places_each_saved_diagram_in_its_panel(tmp_path):
    """Two saved images, a red and a blue square, side by side: the left panel's centre is red, the right one's
    blue."""
    import matplotlib.image

    from mislas_hf.calibration.plots import combine_reliability_diagrams

    paths = []
    for name, colour in (("red", [1.0, 0.0, 0.0]), ("blue", [0.0, 0.0, 1.0])):
        paths.append(tmp_path / f"{name}.png")
        matplotlib.image.imsave(paths[-1], np.tile(np.asarray(colour), (40, 40, 1)))
    output = combine_reliability_diagrams([("CE", paths[0]), ("MiSLAS", paths[1])], tmp_path / "both.png")
    image = matplotlib.image.imread(output)[..., :3]
    height, width = image.shape[:2]
    assert np.allclose(image[height // 2, width // 4], [1, 0, 0], atol=0.02)
    assert np.allclose(image[height // 2, 3 * width // 4], [0, 0, 1], atol=0.02)
    with pytest.raises(ValueError, match="at least one"):
        combine_reliability_diagrams([], tmp_path / "none.png")
