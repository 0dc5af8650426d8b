"""Connecting to Ray, and what every Ray stage of sxai shares."""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .._utils.errors import SxaiError
from .._utils.optional import require


def ray_module():
    """``ray`` with Ray Data, or an error saying how to install them."""
    ray = require("ray", "--engine ray")
    require("ray.data", "--engine ray")
    return ray


@contextmanager
def ray_session(address: str | None = None, progress: bool = False) -> Iterator:
    """A Ray connection for one job: an existing one (``ray.init`` called already, e.g. by a
    notebook or a test) is used as it is; otherwise ``ray.init(address)`` (``None``: the cluster
    in ``RAY_ADDRESS``, else a new local instance; ``"auto"``: the running cluster) and
    ``ray.shutdown()`` after. Ray Data's own progress bars follow ``progress``."""
    ray = ray_module()
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
        started = True
    context = ray.data.DataContext.get_current()
    saved = (context.enable_progress_bars, context.print_on_execution_start)
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    quiet = logging.getLogger("ray.data")  # "execution finished", "progress bars disabled"
    level = quiet.level
    if not progress:
        quiet.setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        context.enable_progress_bars, context.print_on_execution_start = saved
        quiet.setLevel(level)
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class Workers:
    """How the model stage runs: ``concurrency`` actors, each with ``num_gpus`` GPUs (0: CPU)
    and ``threads`` torch threads."""

    concurrency: int
    num_gpus: float
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


def plan_workers(ray, concurrency: int | None, num_gpus: float) -> Workers:
    """Defaults from the cluster: one actor per ``num_gpus`` GPUs; on CPUs, one actor per 4 CPUs
    (at least one), each running torch on its share of the CPUs. A CPU actor reserves one CPU
    from Ray, leaving the rest to the decoding tasks that feed it (torch threads and Pillow
    share the cores, as the local engine's prefetch thread does)."""
    if num_gpus < 0:
        raise ValueError(f"--num-gpus-per-worker must be 0 or more, got {num_gpus}")
    resources = ray.cluster_resources()
    cpus = max(1, int(resources.get("CPU", 1)))
    if num_gpus > 0:
        gpus = resources.get("GPU", 0)
        if gpus < num_gpus:
            raise SxaiError(
                f"--num-gpus-per-worker {num_gpus}: the Ray cluster has {gpus:g} GPUs; "
                "start GPU workers, or score on CPUs (--num-gpus-per-worker 0)"
            )
        concurrency = concurrency or max(1, int(gpus // num_gpus))
        return Workers(concurrency, num_gpus, max(1, cpus // concurrency))
    concurrency = concurrency or max(1, cpus // 4)
    return Workers(concurrency, 0.0, max(1, math.ceil(cpus / concurrency)))


def block_rows(n: int, batch_size: int, max_blocks: int = 2000) -> int:
    """Rows per input block: a whole number of batches, at most ``max_blocks`` blocks. A block is
    what a worker failure redoes, and small blocks keep decoding and scoring in step."""
    batches = math.ceil(max(n, 1) / batch_size)
    return batch_size * max(1, math.ceil(batches / max_blocks))


class FaultDrill:
    """For tests and drills of Ray's fault tolerance: the first actor to reach its ``at``-th call
    while ``marker`` does not exist creates it and kills its own process (SIGKILL), once per
    marker. Ray restarts the actor and retries the lost work."""

    def __init__(self, marker: str | None, at: int = 2) -> None:
        self.marker, self.at, self.calls = marker, at, 0

    def tick(self) -> None:
        self.calls += 1
        if self.marker is None or self.calls != self.at:
            return
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def local_paths_ok(paths: list[Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Paths a Parquet dataset can store (UTF-8 names), and the others with the reason."""
    ok, bad = [], []
    for path in paths:
        try:
            str(path).encode("utf-8")
            ok.append(path)
        except UnicodeEncodeError:
            shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            bad.append(
                (
                    shown,
                    f"{shown}: the file name is not UTF-8, which a Parquet dataset cannot store; rename it",
                )
            )
    return ok, bad


def put_model(ray, model):
    """The model in the object store, as CPU tensors (an actor moves it to its own device); the
    caller's model stays where it was."""
    device = next(model.parameters()).device
    try:
        return ray.put(model.cpu())
    finally:
        model.to(device)
