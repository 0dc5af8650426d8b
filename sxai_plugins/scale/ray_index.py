"""``sxai index SOURCE --engine ray --out DATASET``: the search index built by a Ray Data pipeline.

The driver lists SOURCE (a folder, or a pyarrow-filesystem URI such as ``s3://bucket/prefix``)
and anti-joins the listing with the dataset on (path, mtime_ns, size), with DuckDB: only new or
changed files are scored. Rows of changed or removed files are dropped first, so an interrupted
run never leaves two rows for one path. Then::

    from_blocks(todo) ─► map_batches(_decode)  CPU tasks: read bytes, decode, resize (uint8)
                      ─► map_batches(Scorer)   actors (_score.py): model + spaces loaded once
                                               (GPU actors with num_gpus > 0): one forward pass
                                               per batch gives the prediction, A_s and P_s
                      ─► iter_batches on the driver: whole Parquet part files, renamed into place

A file that cannot be read or decoded becomes a row of ``failures/`` and never fails the job.
Fault tolerance is Ray's: a dead actor is restarted (``max_restarts``) and its unfinished task
retried (``max_task_retries``); a task's output reaches the driver once, when the task is done,
so no row is lost or written twice. The numbers are those of the local engine (the same decoding
and resizing, the same channels-last forward pass).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from ..models.inference import model_size
from ..models.trait_model import TraitModel
from ..search.index import IndexMeta, IndexReport
from ..spaces.space import SpaceSet
from ._decode import decode_batch, list_source
from ._ray import block_rows, plan_workers, put_model, ray_session
from ._score import Scorer

DECODE_MEMORY = 256 * 2**20


# ------------------------------------------------------------------------------------- driver
def index_with_ray(
    model: TraitModel,
    spaces: SpaceSet,
    source: str | Path,
    out: str | Path,
    *,
    batch_size: int = 32,
    concurrency: int | None = None,
    num_gpus_per_worker: float = 0,
    address: str | None = None,
    progress: bool = True,
    rows_per_part: int = 100_000,
    fault_marker: str | None = None,
    on_part: Callable[[int], None] | None = None,
) -> IndexReport:
    """Score the images under ``source`` that are new or changed into the Parquet dataset ``out``.

    Args:
        source: a folder, or a pyarrow-filesystem URI (``s3://…``, ``gs://…``, ``file://…``).
        out: the dataset folder (created if missing); it must have been built with this model
            and these spaces.
        batch_size: images per forward pass (and per decoding task's batch).
        concurrency: scoring actors (default: one per ``num_gpus_per_worker`` GPUs, or one per
            4 CPUs of the cluster).
        num_gpus_per_worker: GPUs per scoring actor (0: score on CPUs).
        address: the Ray cluster (``"auto"``: the running one; ``None``: ``RAY_ADDRESS`` or a new
            local instance). An already initialised Ray is used as it is.
        rows_per_part: rows per Parquet part file; an interruption loses at most the rows not
            yet written, and a rerun scores them.
        fault_marker: tests and drills only: see :class:`~sxai_plugins.scale._ray.FaultDrill`.
        on_part: called with the number of parts written after each part.
    """
    from ..search.parquet import ParquetWriter

    meta = IndexMeta.of(model, spaces)
    writer = ParquetWriter(out, meta)
    report = IndexReport()
    listing, prefix, filesystem, unlisted = list_source(source)
    report.found = listing.num_rows + len(unlisted)
    report.failed.extend(unlisted)
    todo, stale = writer.plan(listing, prefix)
    listed = set(listing.column("path").to_pylist()) if stale else set()
    writer.remove(stale)
    report.removed = sum(1 for p in stale if p not in listed)
    report.unchanged = listing.num_rows - todo.num_rows
    if todo.num_rows == 0:
        return report
    with ray_session(address, progress=False) as ray:
        workers = plan_workers(ray, concurrency, num_gpus_per_worker)
        payload = [put_model(ray, model), ray.put(spaces)]
        rows = block_rows(todo.num_rows, batch_size)
        ds = (
            # the blocks are cut here, their metadata read from the Arrow slices: from_arrow
            # would run a remote metadata task first, whose worker start (about 1.5 s) delays
            # the job before any image is read
            ray.data.from_blocks([todo.slice(i, rows) for i in range(0, todo.num_rows, rows)])
            .map_batches(
                decode_batch,
                batch_size=batch_size,
                batch_format="numpy",
                fn_kwargs={"size": model_size(model), "filesystem": filesystem},
                num_cpus=1,
                # room for a batch's full-size decoded images; being unlike the actors' request,
                # it also keeps decoding in its own tasks (Ray would fuse it into the actors,
                # which would then decode and score in turn instead of at once)
                memory=DECODE_MEMORY,
            )
            .map_batches(
                Scorer,
                batch_size=batch_size,
                batch_format="numpy",
                fn_constructor_args=(payload, workers, fault_marker),
                # Ray Data's actor pools restart dead actors and retry their tasks by default
                # (max_restarts=-1, max_task_retries=-1): nothing to ask for here
                compute=ray.data.ActorPoolStrategy(size=workers.concurrency),
                num_gpus=workers.num_gpus or None,
                num_cpus=1 if workers.num_gpus == 0 else None,
            )
        )
        _collect(ds, writer, todo.num_rows, report, rows_per_part, progress, on_part)
    return report


def _collect(ds, writer, total, report, rows_per_part, progress, on_part) -> None:
    """Stream the scored rows to the driver and write them as whole part files."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..search.parquet import failures_schema, images_schema

    image_columns = images_schema(writer.meta).names
    failure_columns = failures_schema(writer.meta).names
    pending: list = []
    pending_rows = 0

    def flush() -> None:
        nonlocal pending, pending_rows
        if not pending:
            return
        table = pa.concat_tables(pending)
        bad = pc.not_equal(table["error"], "")
        images = table.filter(pc.invert(bad)).select(image_columns)
        failures = table.filter(bad).select(failure_columns)
        writer.add(images, failures)
        report.scored += images.num_rows
        report.failed.extend(zip(failures["path"].to_pylist(), failures["error"].to_pylist()))
        report.batches += 1
        pending, pending_rows = [], 0
        if on_part is not None:
            on_part(writer.parts)

    with tqdm(total=total, desc="indexing", unit="img", disable=not progress) as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            pending.append(batch)
            pending_rows += batch.num_rows
            bar.update(batch.num_rows)
            if pending_rows >= rows_per_part:
                flush()
        flush()
