"""The installed commands: each `mislas-*` console script resolves to its job, and exits 0 on success (a console
script's `sys.exit(value)` would exit 1 on the metrics dict that `main` returns)."""

import importlib.metadata
import subprocess
import sys

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
