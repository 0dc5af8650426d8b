"""The one inference path every command runs: image files in, ``(paths, TraitOutput)`` batches out.

:func:`iter_outputs` is what ``predict``, ``explain``, ``index``, ``report``, the detector's
calibration, the adversarial evaluation and :func:`score_paths` share:

- the model runs in channels-last memory format (:func:`channels_last`, undone afterwards) on
  channels-last inputs, under ``torch.inference_mode``: about 1.6× the NCHW forward pass on CPU
  here, with the same numbers (≤ 1e-5 on logits, traits and P_s; ``tests/test_inference.py``);
- decoding and resizing run in a background thread that prefetches the next batches while the
  model works (Pillow releases the GIL while it decodes and resizes). A ``DataLoader`` with
  worker processes is available (``loader="workers"``) but lost on this 2-core machine; see
  ``benchmarks/bench_predict.py`` and the README for the figures;
- on CUDA, batches are pinned and copied with ``non_blocking``; ``precision="bf16"|"fp16"`` runs
  the forward pass under autocast (outputs are returned as float32);
- unreadable files are reported in order (into ``failures`` when given, else logged) and skipped;
  the batches hold ``batch_size`` readable images each, as :func:`~sxai_plugins.data.images.iter_batches`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .._utils.errors import ImageLoadError, SxaiError
from ..data.images import LoadedBatch, load_image, to_tensor
from .trait_model import TraitModel, TraitOutput

log = logging.getLogger("sxai")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOADERS = ("thread", "workers", "none")


@dataclass
class Scored:
    paths: list[Path]
    logits: torch.Tensor  # N × classes
    traits: torch.Tensor  # N × C
    failures: list[tuple[Path, str]] = field(default_factory=list)
    # layer -> N × 2C_l: the model's pooled layer outputs (when it pools any)
    pooled: dict[str, torch.Tensor] | None = None

    def features(self, layers: Sequence[str] = ()) -> torch.Tensor:
        """What a space reading ``layers`` takes (``TraitOutput.features``)."""
        return TraitOutput(self.logits, self.traits, self.pooled).features(layers)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


@dataclass
class OutputBatch:
    """One batch of :func:`iter_outputs`: the readable images' paths and the model's outputs
    (float32, on the model's device); ``images`` (``B×3×H×W`` in [0, 1], on the device) only when
    asked for with ``keep_images``."""

    paths: list[Path]
    output: TraitOutput
    images: torch.Tensor | None = None


def model_size(model: TraitModel) -> tuple[int, int]:
    return model.input_size[1], model.input_size[2]


def _is_channels_last(model: torch.nn.Module) -> bool | None:
    for param in model.parameters():
        if param.dim() == 4:
            return (
                param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
            )
    return None


@contextmanager
def channels_last(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in channels-last memory format inside the block, back in NCHW after it (unless it
    was channels-last already). The parameters stay the same objects, so optimisers and hooks that
    hold them keep working; their storage is converted outside inference mode, so they can still
    take part in autograd (adversarial attacks) afterwards."""
    before = _is_channels_last(model)
    if before is None or before:
        yield model
        return
    with torch.inference_mode(False), torch.no_grad():
        model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        with torch.inference_mode(False), torch.no_grad():
            model.to(memory_format=torch.contiguous_format)


# ------------------------------------------------------------------------------------ decoding
def _decode(
    path: str | Path, size: tuple[int, int]
) -> tuple[Path, torch.Tensor | None, str | None]:
    try:
        return Path(path), to_tensor(load_image(path, size), size), None
    except ImageLoadError as exc:
        return Path(path), None, str(exc)


class _Decoded(torch.utils.data.Dataset):
    """The files as a map-style dataset for ``loader="workers"``."""

    def __init__(self, paths: Sequence[str | Path], size: tuple[int, int]) -> None:
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return _decode(self.paths[index], self.size)


def _one_thread_worker(_: int) -> None:
    torch.set_num_threads(1)


def _single(item):
    return item


def _items(paths: Sequence[str | Path], size: tuple[int, int], loader: str, workers: int):
    if loader == "workers" and workers > 0 and len(paths) > 1:
        yield from torch.utils.data.DataLoader(
            _Decoded(paths, size),
            batch_size=None,
            num_workers=min(workers, len(paths)),
            collate_fn=_single,
            worker_init_fn=_one_thread_worker,
            prefetch_factor=8,
        )
    else:
        for path in paths:
            yield _decode(path, size)


def _batches(
    paths, size, batch_size, loader, workers, pin
) -> Iterator[tuple[LoadedBatch | None, list]]:
    """``(batch, failures found before it)``; the last item may be ``(None, trailing failures)``."""
    ok: list[Path] = []
    tensors: list[torch.Tensor] = []
    bad: list[tuple[Path, str]] = []
    for path, tensor, why in _items(paths, size, loader, workers):
        if tensor is None:
            bad.append((path, why))
            continue
        ok.append(path)
        tensors.append(tensor)
        if len(tensors) == batch_size:
            images = torch.stack(tensors)
            yield LoadedBatch(ok, images.pin_memory() if pin else images), bad
            ok, tensors, bad = [], [], []
    if tensors:
        images = torch.stack(tensors)
        yield LoadedBatch(ok, images.pin_memory() if pin else images), bad
    elif bad:
        yield None, bad


_DONE = object()


def _prefetched(source: Iterator, depth: int) -> Iterator:
    """``source`` run in a background thread, up to ``depth`` items ahead of the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in source:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(exc)

    thread = threading.Thread(target=run, name="sxai-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------ inference
def iter_outputs(
    model: TraitModel,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    failures: list[tuple[Path, str]] | None = None,
    *,
    precision: str = "fp32",
    loader: str = "thread",
    workers: int = 1,
    prefetch: int = 2,
    keep_images: bool = False,
) -> Iterator[OutputBatch]:
    """Batches of the readable images in ``paths``, in order, with the model's outputs.

    Unreadable files are appended to ``failures`` (when given; else logged as warnings) by the
    time the batch that follows them is yielded, as :func:`iter_batches` does. The model is in
    channels-last format while the generator runs, and back in NCHW once it is exhausted or
    closed; a caller that runs the model itself between batches (an attack) gets the same numbers.
    """
    if precision not in PRECISIONS:
        raise SxaiError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if loader not in LOADERS:
        raise SxaiError(f"unknown loader {loader!r}; choose from {', '.join(LOADERS)}")
    device = next(model.parameters()).device
    if PRECISIONS[precision] is not None and device.type != "cuda":
        raise SxaiError(
            f"--precision {precision} needs a CUDA device (the model is on {device}); "
            "use fp32 on the CPU"
        )
    cuda = device.type == "cuda"
    source = _batches(paths, model_size(model), batch_size, loader, workers, pin=cuda)
    if loader != "none":
        source = _prefetched(source, prefetch)
    autocast = (
        torch.autocast("cuda", dtype=PRECISIONS[precision])
        if PRECISIONS[precision] is not None
        else nullcontext()
    )
    with channels_last(model):
        for batch, bad in source:
            if failures is not None:
                failures.extend(bad)
            else:
                for _path, why in bad:
                    log.warning("skipped %s", why)
            if batch is None:
                continue
            # the copy is made outside inference mode so that a caller may attack the images
            images = batch.images.to(device, non_blocking=cuda).contiguous(
                memory_format=torch.channels_last
            )
            with torch.inference_mode(), autocast:
                out = model(images)
                out = TraitOutput(
                    out.logits.float(),
                    out.traits.float(),
                    {k: v.float() for k, v in out.pooled.items()} if out.pooled else None,
                )
            yield OutputBatch(batch.paths, out, images if keep_images else None)


def score_paths(
    model: TraitModel,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "scoring",
    failures: list[tuple[Path, str]] | None = None,
    precision: str = "fp32",
) -> Scored:
    """Logits and traits of every readable image; unreadable ones end up in ``Scored.failures``.

    Pass ``failures`` to report them yourself (they are appended there too); otherwise each is
    logged as a warning.
    """
    report = failures is None
    failures = [] if failures is None else failures
    known = len(failures)
    all_paths: list[Path] = []
    logits: list[torch.Tensor] = []
    traits: list[torch.Tensor] = []
    pooled: dict[str, list[torch.Tensor]] = {}
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for batch in iter_outputs(model, paths, batch_size, failures, precision=precision):
            logits.append(batch.output.logits.cpu())
            traits.append(batch.output.traits.cpu())
            for name, values in (batch.output.pooled or {}).items():
                pooled.setdefault(name, []).append(values.cpu())
            all_paths.extend(batch.paths)
            bar.update(
                len(all_paths) + len(failures) - known - bar.n
            )  # unreadable files count as done
        bar.update(len(paths) - bar.n)
    if report:
        for _path, why in failures:
            log.warning("skipped %s", why)
    empty = torch.zeros(0, model.num_classes), torch.zeros(0, model.trait_dim)
    return Scored(
        all_paths,
        torch.cat(logits) if logits else empty[0],
        torch.cat(traits) if traits else empty[1],
        failures,
        {name: torch.cat(chunks) for name, chunks in pooled.items()} or None,
    )
