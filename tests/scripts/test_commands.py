"""The commands: each `mislas-*` console script resolves to its job and exits 0 on success (a console script's
`sys.exit(value)` would exit 1 on the metrics dict that `main` returns), and `--help` of each recipe works."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = {
    "mislas-train": "mislas_hf.scripts.train:cli",
    "mislas-evaluate": "mislas_hf.scripts.evaluate:cli",
    "mislas-calibrate": "mislas_hf.scripts.calibrate:cli",
    "mislas-convert": "mislas_hf.convert:main",
}


def test_console_scripts_point_at_the_jobs():
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert {name: scripts.get(name) for name in COMMANDS} == COMMANDS


@pytest.mark.parametrize("module", ["train", "evaluate", "calibrate"])
def test_a_successful_command_exits_0(module):
    code = (
        f"import sys, mislas_hf.scripts.{module} as job\n"
        f"job.main = lambda argv=None: {{'eval_accuracy': 0.5}}\n"
        f"sys.exit(job.cli())\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize(
    "recipe, own_options",
    [
        ("train.py", ["--stage1_epochs", "--backbone"]),
        ("evaluate_model.py", ["--model"]),
        ("calibrate.py", ["--method", "--classwise_regularization"]),
    ],
)
def test_help_of_each_recipe_lists_its_options(recipe, own_options):
    """`--help` is how the README says to list the options: it exits 0 and names the job's own options beside the
    data and training ones (argparse formats every help text with %, so a bare % in one broke them all)."""
    result = subprocess.run([sys.executable, str(RECIPES / recipe), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]
    for option in [*own_options, "--dataset_name", "--validation_split_percentage", "--learning_rate"]:
        assert f"  {option} " in result.stdout, option
