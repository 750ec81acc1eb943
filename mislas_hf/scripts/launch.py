"""How a job runs on this machine: its logging (as transformers' example scripts set it up) and, on a CPU, the
number of threads each process computes with when the launcher (not the user) chose it."""

import logging
import os
import sys

import datasets
import psutil
import torch
import transformers
from accelerate.utils import get_int_from_env

from ..training_args import MislasTrainingArguments

logger = logging.getLogger(__name__)


def setup_logging(args: MislasTrainingArguments) -> None:
    """Log to stdout at the process's level: INFO on the main process unless `--log_level` says otherwise, WARNING on
    the others (`TrainingArguments.get_process_log_level`), for mislas_hf, transformers and datasets alike."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = args.get_process_log_level()
    logging.getLogger("mislas_hf").setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


LAUNCHER_MARKERS = ("ACCELERATE_DYNAMO_BACKEND", "TORCHELASTIC_RUN_ID")
"""Environment variables that `accelerate launch` and `torchrun` (`torch.distributed.run`) set in their processes."""
LOCAL_PROCESS_COUNT_VARIABLES = ["LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"]
"""Where launchers put the number of processes on this machine (torchrun / accelerate, Intel MPI, Open MPI)."""


def thread_count_chosen_by_launcher() -> bool:
    """
    Whether `OMP_NUM_THREADS` in this process was set by `accelerate launch` or `torchrun` rather than by the user.

    Both set it for the processes they start: `accelerate launch` (accelerate's `commands/launch.py`) to
    `--num_cpu_threads_per_process`, else the user's `OMP_NUM_THREADS`, else 1 (physical cores / processes with
    `--cpu`); `torchrun` to 1 with several processes when the user set none. A thread count the user chose therefore
    shows in the launcher's own environment (`OMP_NUM_THREADS`) or command line (`--num_cpu_threads_per_process`);
    when neither has it, the launcher's default is in force. Plain `python` runs (no launcher variables) and launchers
    whose process cannot be read count as the user's choice.
    """
    if "OMP_NUM_THREADS" not in os.environ or not any(marker in os.environ for marker in LAUNCHER_MARKERS):
        return False
    try:
        launcher = psutil.Process().parent()
        launcher_environment, launcher_arguments = launcher.environ(), launcher.cmdline()
    except (psutil.Error, AttributeError):  # no parent, or its environment is not readable
        return False
    chosen_on_command_line = any(arg.startswith("--num_cpu_threads_per_process") for arg in launcher_arguments)
    return "OMP_NUM_THREADS" not in launcher_environment and not chosen_on_command_line


def use_cpu_cores(args: MislasTrainingArguments) -> int:
    """
    On a CPU run whose thread count the launcher chose (`thread_count_chosen_by_launcher`, e.g. the README's
    `accelerate launch` without an accelerate config, which gives every process one thread), give each process an
    equal share of the physical cores (accelerate's own rule for multi-CPU runs: cores / local processes, at least
    1) with `torch.set_num_threads`, and log it. Thread counts set by the user, and GPU runs, are left alone.
    Returns the number of intra-op threads torch uses.
    """
    if args.device.type == "cpu" and thread_count_chosen_by_launcher():
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        local_processes = max(1, get_int_from_env(LOCAL_PROCESS_COUNT_VARIABLES, 1))
        threads = max(1, cores // local_processes)
        if threads != torch.get_num_threads():
            logger.info(
                f"The launcher set OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (no thread count was given): "
                f"training on {threads} threads per process ({cores} physical cores / {local_processes} local "
                "processes). Set OMP_NUM_THREADS or --num_cpu_threads_per_process to choose."
            )
            torch.set_num_threads(threads)
    return torch.get_num_threads()
