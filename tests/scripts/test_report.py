"""mislas_hf.scripts.report.paper_metrics_for: a card shows the paper's numbers only beside the model they were
reported for (the paper's backbone for the benchmark, stage 2, the MiSLAS head)."""

from types import SimpleNamespace

import pytest

from mislas_hf import MislasConfig
from mislas_hf.scripts.report import paper_metrics_for

CIFAR10_IF100 = SimpleNamespace(name="cifar10-lt", imbalance_factor=100)
IMAGENET_LT = SimpleNamespace(name="imagenet-lt", imbalance_factor=None)


@pytest.mark.parametrize(
    "benchmark, config, expected",
    [
        (CIFAR10_IF100, dict(stage=2, head_mode="mislas"), {"accuracy": 0.821, "ece": 0.0370}),  # Table 4
        (SimpleNamespace(name="cifar10-lt", imbalance_factor=10), dict(stage=2, head_mode="mislas"),
         {"accuracy": 0.900, "ece": 0.0120}),
        (IMAGENET_LT, dict(backbone="resnet50", stage=2, head_mode="mislas"),
         {"accuracy": 0.527, "ece": 0.0183, "few_accuracy": 0.358}),  # Table 5 / Table 7, ResNet-50
        (CIFAR10_IF100, dict(stage=1, head_mode="linear"), None),  # stage 1: not the model of the table
        (CIFAR10_IF100, dict(stage=2, head_mode="crt", retention_factor=0.0), None),  # a baseline's head
        (CIFAR10_IF100, dict(stage=2, head_mode="lws"), None),
        (CIFAR10_IF100, dict(backbone="resnet50", stage=2, head_mode="mislas"), None),  # not the paper's backbone
        (IMAGENET_LT, dict(backbone="resnet101", stage=2, head_mode="mislas"), None),  # the table is ResNet-50's
        (CIFAR10_IF100, dict(backbone_config={"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "intermediate_size": 37}, backbone=None,
                             stage=2, head_mode="mislas"), None),
        (SimpleNamespace(name="my_data", imbalance_factor=None), dict(stage=2, head_mode="mislas"), None),
    ],
)
def test_paper_numbers_only_for_the_model_the_paper_reports(benchmark, config, expected):
    metrics = paper_metrics_for(benchmark, MislasConfig(num_labels=10, **config))
    if expected is None:
        assert metrics is None
    else:
        assert {key: metrics[key] for key in expected} == expected
        assert metrics["source"].startswith("Zhong et al. (CVPR 2021), Table")
