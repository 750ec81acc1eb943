"""Expected calibration error (ECE) as a Hugging Face ``evaluate`` metric.

A thin wrapper around :func:`mislas_hf.calibration.expected_calibration_error`
(MiSLAS, Zhong et al., CVPR 2021, Sec. 2): 15 equal-width bins closed on the
right, as in the authors' code. ``evaluate`` copies this file into its cache
before importing it, so ``mislas_hf`` is imported by its absolute name and must
be installed (``pip install -e .``) or on ``sys.path``.
"""

import datasets
import evaluate

from mislas_hf.calibration import confidence_and_correctness, expected_calibration_error

_CITATION = """\
@inproceedings{zhong2021mislas,
  title={Improving Calibration for Long-Tailed Recognition},
  author={Zhong, Zhisheng and Cui, Jiequan and Liu, Shu and Jia, Jiaya},
  booktitle={CVPR},
  year={2021}
}
"""

_DESCRIPTION = """\
Expected calibration error of top-1 predictions: the N predictions are grouped
into n_bins equal-width confidence bins (a, b] and
ECE = sum_b |S_b| / N * |acc(S_b) - conf(S_b)|, returned as a fraction
(multiply by 100 for the percent the MiSLAS paper reports).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: class probabilities, one list of K floats per example (rows of softmax outputs).
    references: integer labels in [0, K).
    n_bins: number of bins (default 15, as in the paper).
Returns:
    ece: expected calibration error, a fraction in [0, 1].
Examples:
    >>> ece = evaluate.load("mislas_hf/metrics/ece")
    >>> ece.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])
    {'ece': 0.45}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ECE(evaluate.Metric):
    """Expected calibration error (MiSLAS Sec. 2) of class-probability predictions."""

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
        return {"ece": expected_calibration_error(confidences, correct, n_bins)}
