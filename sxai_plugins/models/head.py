"""Training a classifier head on frozen GAP traits (the paper: Adam, batch 16, 3 epochs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import WeightsError
from .._utils.io import write_json, write_safetensors
from ..data.images import image_folder
from .inference import score_paths
from .trait_model import TraitModel


@dataclass
class HeadResult:
    weights: Path
    card: Path
    train_accuracy: float
    heldout_accuracy: float
    n_train: int
    n_heldout: int


def split_indices(n: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_heldout = int(round(n * heldout_fraction))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def fit_head(
    traits: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> torch.nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = torch.nn.Linear(traits.shape[1], num_classes)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * ((len(traits) + batch_size - 1) // batch_size)
    with tqdm(total=steps, desc="training head", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(traits), generator=generator)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                loss = torch.nn.functional.cross_entropy(head(traits[idx]), labels[idx])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                bar.update(1)
    return head


def train_head(
    model: TraitModel,
    data: str | Path,
    out: str | Path,
    *,
    heldout_fraction: float = 0.2,
    epochs: int = 3,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> HeadResult:
    """Train ``model``'s head on an ImageFolder and write ``out`` (safetensors) and its JSON card.

    The body stays frozen, so its traits are computed once; a seeded ``heldout_fraction`` of the
    images is kept out of training and gives the held-out accuracy written in the card.
    """
    data = Path(data)
    out = Path(out)
    paths, labels, classes = image_folder(data)
    scored = score_paths(model, paths, progress=progress, desc="extracting traits")
    label_of = dict(zip(paths, labels))
    y = torch.tensor([label_of[p] for p in scored.paths])
    train_idx, held_idx = split_indices(len(y), heldout_fraction, seed)
    head = fit_head(
        scored.traits[train_idx],
        y[train_idx],
        len(classes),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
    )
    with torch.no_grad():
        predicted = head(scored.traits).argmax(1)

    def accuracy(idx) -> float:
        return float((predicted[idx] == y[idx]).float().mean()) if len(idx) else float("nan")

    model.class_names = list(classes)
    model.head = head.eval()
    weights = write_safetensors(out, head.state_dict(), {"classes": json.dumps(classes)})
    card_path = out.with_suffix(".json")
    write_json(
        card_path,
        {
            "backbone": model.name,
            "backbone_fingerprint": model.fingerprint(),
            "classes": classes,
            "trait_dim": model.trait_dim,
            "data": str(data),
            "n_images": len(y),
            "skipped": [f"{p}: {why}" for p, why in scored.failures],
            "heldout_fraction": heldout_fraction,
            "train_accuracy": accuracy(train_idx),
            "heldout_accuracy": accuracy(held_idx),
            "heldout": [str(scored.paths[i].relative_to(data)) for i in held_idx],
            "recipe": {"optimizer": "Adam", "lr": lr, "batch_size": batch_size, "epochs": epochs},
            "seed": seed,
        },
    )
    return HeadResult(
        weights, card_path, accuracy(train_idx), accuracy(held_idx), len(train_idx), len(held_idx)
    )


def load_head_file(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A head written by :func:`train_head`: its tensors and its classes."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"head file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as exc:
        raise WeightsError(f"head file {path} is not a valid safetensors file: {exc}") from exc
    if "classes" not in metadata:
        raise WeightsError(
            f"head file {path} has no 'classes' metadata; was it written by sxai train-head?"
        )
    return state, json.loads(metadata["classes"])
