"""How a job runs on this machine: its logging (as transformers' example scripts set it up) and, on a CPU, the
number of threads each process computes with when the user did not choose it (`mislas_hf.cpu_threads`)."""

import logging
import os
import sys

import datasets
import psutil
import torch
import transformers
from accelerate.utils import get_int_from_env

from ..cpu_threads import ThreadCountAdapter, free_core_threads
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
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""The environment variables through which a user sets torch's intra-op thread count."""


def local_process_count() -> int:
    """The number of this job's processes on this machine (1 without a launcher)."""
    return max(1, get_int_from_env(LOCAL_PROCESS_COUNT_VARIABLES, 1))


def thread_count_chosen_by_user() -> bool:
    """
    Whether the user chose this process's thread count: `OMP_NUM_THREADS` or `MKL_NUM_THREADS` in their environment,
    or `accelerate launch --num_cpu_threads_per_process`.

    Under `accelerate launch` and `torchrun` the process's own `OMP_NUM_THREADS` does not tell: both set it for the
    processes they start (`accelerate launch` to `--num_cpu_threads_per_process`, else the user's `OMP_NUM_THREADS`,
    else 1; `torchrun` to 1 with several processes), so the launcher's own environment and command line are read; a
    launcher whose process cannot be read counts as the user's choice. A plain `python` run without these variables
    runs on torch's default (all physical cores), which nobody chose either: the package chooses for it too, as for
    the README's `accelerate launch`. A count set in code (`torch.set_num_threads` before calling a job) is not seen:
    set `OMP_NUM_THREADS` to keep a count.
    """
    if not any(marker in os.environ for marker in LAUNCHER_MARKERS):
        return any(name in os.environ for name in USER_THREAD_VARIABLES)
    try:
        launcher = psutil.Process().parent()
        launcher_environment, launcher_arguments = launcher.environ(), launcher.cmdline()
    except (psutil.Error, AttributeError):  # no parent, or its environment is not readable
        return True
    chosen_on_command_line = any(arg.startswith("--num_cpu_threads_per_process") for arg in launcher_arguments)
    return chosen_on_command_line or any(name in launcher_environment for name in USER_THREAD_VARIABLES)


def use_cpu_cores(args: MislasTrainingArguments) -> int:
    """
    On a CPU run whose thread count the user did not choose (`thread_count_chosen_by_user`: the README's `accelerate
    launch` without an accelerate config, which gives every process one thread, or `python` without
    `OMP_NUM_THREADS`), set torch's intra-op threads (`torch.set_num_threads`) to the cores of this process's CPU set
    that other processes leave free, shared between the local processes, at least 1 (`free_core_threads`; during
    training `cpu_thread_adapter` follows the free cores). A count the user chose is kept, and GPU runs are left
    alone. Logs the count and where it came from; returns the number of intra-op threads torch uses.
    """
    if args.device.type != "cpu":
        return torch.get_num_threads()
    if thread_count_chosen_by_user():
        logger.info(
            f"training on {torch.get_num_threads()} threads per process, the count you chose (OMP_NUM_THREADS / "
            "MKL_NUM_THREADS / --num_cpu_threads_per_process)"
        )
        return torch.get_num_threads()
    choice = free_core_threads(local_process_count())
    torch.set_num_threads(choice.threads)
    logger.info(
        f"{choice}: training on {choice.threads} threads per process, following the free cores during training. "
        "Set OMP_NUM_THREADS to choose the count yourself."
    )
    return torch.get_num_threads()


def compute_setup(args: MislasTrainingArguments) -> str:
    """Where and how this process computes, for the log: device, processes, torch's intra-op threads per process and
    the precision (`bf16` / `fp16` autocast, else `fp32`; `args.bf16` defaults to on where the hardware has native
    bf16, see `MislasTrainingArguments`), e.g. "cpu: 1 processes, 2 threads per process, precision fp32"."""
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    return (
        f"{args.device}: {args.world_size} processes, {torch.get_num_threads()} threads per process, "
        f"precision {precision}"
    )


def cpu_thread_adapter(args: MislasTrainingArguments) -> ThreadCountAdapter | None:
    """The callback that follows the free cores during training (`ThreadCountAdapter`) on a CPU run whose thread
    count the user did not choose; None otherwise."""
    if args.device.type != "cpu" or thread_count_chosen_by_user():
        return None
    return ThreadCountAdapter.for_this_job(local_process_count())
