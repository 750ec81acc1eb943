"""Reliability diagrams (DeGroot & Fienberg 1983; Guo et al., ICML 2017) in the style of MiSLAS Figs. 1 and 4:
per-bin accuracy against confidence over the bins of :func:`mislas_hf.calibration.metrics.calibration_bins`,
drawn with matplotlib, which is imported inside the functions that make a figure.
"""

import numpy as np

from .metrics import calibration_bins


def draw_reliability_diagram(ax, bins, title=None):
    """Draw a reliability diagram in the style of MiSLAS Figs. 1 and 4 onto a matplotlib ``Axes``.

    Blue bars are the bin accuracies ("Outputs"), the shaded bars the gap to
    the bin's mean confidence, the dashed diagonal perfect calibration; the
    ECE is printed in percent. The first bar container on ``ax`` holds the
    accuracy bars, the second the gaps.

    Args:
        ax: a matplotlib ``Axes``.
        bins: :class:`CalibrationBins` from :func:`calibration_bins`.
        title: optional title.

    Returns:
        ``ax``.
    """
    left, width = bins.edges[:-1], np.diff(bins.edges)
    ax.bar(left, bins.accuracies, width=width, align="edge", color="#4c72b0", edgecolor="black", linewidth=0.8,
           label="Outputs")
    ax.bar(left, bins.gaps, bottom=np.minimum(bins.accuracies, bins.confidences), width=width, align="edge",
           color="#f08080", alpha=0.5, edgecolor="#c03030", hatch="//", linewidth=0.8, label="Gap")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.5)
    ax.text(0.96, 0.04, f"ECE = {100 * bins.ece:.2f}%", transform=ax.transAxes, ha="right", va="bottom",
            fontsize=12, bbox={"facecolor": "white", "edgecolor": "lightgray", "alpha": 0.9})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("Confidence")
    ax.set_ylabel("Accuracy")
    ax.legend(loc="upper left")
    if title is not None:
        ax.set_title(title)
    return ax


def reliability_diagram(confidences, correct, path, n_bins=15, title=None):
    """Save a reliability diagram (MiSLAS Figs. 1 and 4, 15 bins) of top-1 predictions as a PNG.

    Args:
        confidences: ``[N]`` top-1 confidences in ``[0, 1]``.
        correct: ``[N]`` booleans, whether the top-1 prediction is right.
        path: output file (PNG).
        n_bins: number of bins.
        title: optional title.

    Returns:
        ``path``.
    """
    from matplotlib.figure import Figure

    bins = calibration_bins(confidences, correct, n_bins)
    figure = Figure(figsize=(5, 5), dpi=100)
    draw_reliability_diagram(figure.subplots(), bins, title=title)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def combine_reliability_diagrams(panels, path, columns=3):
    """Save saved reliability diagrams side by side as one PNG (the paper's Figs. 1 and 4 compare methods so).

    Args:
        panels: ``[(title, png_path), ...]``, e.g. the ``reliability_diagram.png`` each evaluation wrote.
        path: output file (PNG).
        columns: panels per line (fewer when there are fewer panels).

    Returns:
        ``path``.
    """
    import matplotlib.image
    from matplotlib.figure import Figure

    if not panels:
        raise ValueError("combine_reliability_diagrams needs at least one (title, png_path) panel")
    columns = min(columns, len(panels))
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(4 * columns, 4 * lines))
    for index, (title, png_path) in enumerate(panels):
        ax = figure.add_subplot(lines, columns, index + 1)
        ax.imshow(matplotlib.image.imread(png_path))
        ax.set_title(title)
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
