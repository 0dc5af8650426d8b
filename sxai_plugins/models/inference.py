"""Batched forward passes over image files: logits and traits in one pass, bad files skipped."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.images import iter_batches
from .trait_model import TraitModel

log = logging.getLogger("sxai")


@dataclass
class Scored:
    paths: list[Path]
    logits: torch.Tensor  # N × classes
    traits: torch.Tensor  # N × C
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


def model_size(model: TraitModel) -> tuple[int, int]:
    return model.input_size[1], model.input_size[2]


@torch.inference_mode()
def score_paths(
    model: TraitModel,
    paths: Sequence[str | Path],
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "scoring",
    failures: list[tuple[Path, str]] | None = None,
) -> Scored:
    """Logits and traits of every readable image; unreadable ones end up in ``Scored.failures``.

    Pass ``failures`` to report them yourself (they are appended there too); otherwise each is
    logged as a warning.
    """
    report = failures is None
    failures = [] if failures is None else failures
    all_paths: list[Path] = []
    logits: list[torch.Tensor] = []
    traits: list[torch.Tensor] = []
    device = next(model.parameters()).device
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for batch in iter_batches(paths, model_size(model), batch_size, failures):
            out = model(batch.images.to(device))
            logits.append(out.logits.float().cpu())
            traits.append(out.traits.float().cpu())
            all_paths.extend(batch.paths)
            bar.update(len(batch.paths))
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
    )
