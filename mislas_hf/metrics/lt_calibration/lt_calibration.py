"""Long-tailed calibration metrics as a Hugging Face ``evaluate`` metric: classwise ECE, adaptive ECE and the
Brier score, beside the top-1 ECE of the MiSLAS paper.

A thin wrapper around :mod:`mislas_hf.calibration` (``classwise_expected_calibration_error``,
``adaptive_expected_calibration_error``, ``brier_score``, ``expected_calibration_error``). ``evaluate`` copies
this file into its cache before importing it, so ``mislas_hf`` is imported by its absolute name and must be
installed (``pip install -e .``) or on ``sys.path``.
"""

import datasets
import evaluate

from mislas_hf.calibration import (
    adaptive_expected_calibration_error,
    brier_score,
    classwise_expected_calibration_error,
    confidence_and_correctness,
    expected_calibration_error,
)

_CITATION = """\
@inproceedings{kull2019beyond,
  title={Beyond temperature scaling: Obtaining well-calibrated multi-class probabilities with Dirichlet calibration},
  author={Kull, Meelis and Perello-Nieto, Miquel and K{\\"a}ngsepp, Markus and Silva Filho, Telmo and Song, Hao and
          Flach, Peter},
  booktitle={NeurIPS},
  year={2019}
}
@inproceedings{nixon2019measuring,
  title={Measuring Calibration in Deep Learning},
  author={Nixon, Jeremy and Dusenberry, Michael W. and Zhang, Linchuan and Jerfel, Ghassen and Tran, Dustin},
  booktitle={CVPR Workshops},
  year={2019}
}
"""

_DESCRIPTION = """\
Calibration of class-probability predictions as the long-tailed literature reports it, all as fractions:
ece (top-1, n_bins equal-width bins (a, b], as MiSLAS), classwise_ece (mean over all K classes of the ECE of p_k
against 1[y = k]), adaptive_ece (top-1, n_bins equal-mass bins: stable sort by confidence, numpy.array_split) and
brier (mean over examples of sum_k (p_k - 1[y = k])^2).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class probabilities, one list of K floats per example (rows of softmax outputs).
    references: integer labels in [0, K).
    n_bins: number of bins (default 15, as in the MiSLAS paper).
Returns:
    ece, classwise_ece, adaptive_ece: fractions in [0, 1]; brier: in [0, 2].
Examples:
    >>> metric = evaluate.load("mislas_hf/metrics/lt_calibration")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])
    {'ece': 0.45, 'classwise_ece': 0.45, 'adaptive_ece': 0.45, 'brier': 0.65} (up to float rounding)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LongTailedCalibration(evaluate.Metric):
    """Top-1, classwise and adaptive ECE and the Brier score of class-probability predictions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, n_bins=15):
        confidences, correct = confidence_and_correctness(predictions, references)
        return {
            "ece": expected_calibration_error(confidences, correct, n_bins),
            "classwise_ece": classwise_expected_calibration_error(predictions, references, n_bins),
            "adaptive_ece": adaptive_expected_calibration_error(confidences, correct, n_bins),
            "brier": brier_score(predictions, references),
        }
