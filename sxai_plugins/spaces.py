"""Semantic spaces: a few trait channels that respond to a concept, their weights and distribution.

A space for (class, concept), say (cat, eyes), holds the indices of its semantically sensitive
neurons (SSNs), their signed differences Δ between the PC1 of unmasked and masked images, and a
normal distribution fitted to the weighted activation ``A_s(z) = mean_i(Δ_i · a_i(z))`` over a
reference set. The semantic probability is

    P_s(z) = (Φ(A_s(z)) − Φ(A_min)) / (Φ(A_max) − Φ(A_min)),  clipped to [0, 1],

with Φ the fitted normal's CDF and A_min, A_max the extremes over the reference set.

Files are safetensors (tensors ``indices``, ``delta``) with the rest as JSON metadata under
``sxai.space``: no pickle anywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from scipy.special import ndtr

from .errors import SpaceError
from .io import write_safetensors

FORMAT_VERSION = 1
METADATA_KEY = "sxai.space"


@dataclass
class Reference:
    """The normal fitted to A_s over a reference set."""

    mu: float
    sigma: float
    a_min: float
    a_max: float
    n: int
    qq_r2: float

    @classmethod
    def fit(cls, activations: np.ndarray | torch.Tensor) -> Reference:
        a = np.asarray(activations.detach().cpu() if isinstance(activations, torch.Tensor) else activations,
                       dtype=np.float64).ravel()
        if a.size < 3:
            raise SpaceError(f"a reference distribution needs at least 3 images, got {a.size}")
        mu, sigma = float(a.mean()), float(a.std(ddof=1))
        if not sigma > 0:
            raise SpaceError("all reference activations are equal: the space does not vary over the reference set")
        (_osm, _osr), (_slope, _intercept, r) = stats.probplot(a, dist="norm")
        return cls(mu, sigma, float(a.min()), float(a.max()), int(a.size), float(r * r))


@dataclass
class SemanticSpace:
    class_name: str
    concept: str
    backbone: str
    fingerprint: str
    trait_dim: int
    indices: torch.Tensor  # N_SSN channel indices (int64, never negative)
    delta: torch.Tensor  # N_SSN signed differences, same order
    reference: Reference | None = None
    trait_layer: str = "gap"
    masker: str = ""
    n_images: int = 0
    recipe: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.indices = torch.as_tensor(self.indices, dtype=torch.int64).flatten()
        self.delta = torch.as_tensor(self.delta, dtype=torch.float32).flatten()
        if self.indices.numel() != self.delta.numel() or self.indices.numel() == 0:
            raise SpaceError(
                f"space {self.key}: {self.indices.numel()} indices but {self.delta.numel()} weights")
        if int(self.indices.min()) < 0 or int(self.indices.max()) >= self.trait_dim:
            raise SpaceError(f"space {self.key}: SSN indices must lie in [0, {self.trait_dim})")
        if len(set(self.indices.tolist())) != self.indices.numel():
            raise SpaceError(f"space {self.key}: duplicate SSN indices")

    @property
    def key(self) -> str:
        return f"{self.class_name}.{self.concept}"

    @property
    def n_ssn(self) -> int:
        return int(self.indices.numel())

    def weight_vector(self) -> torch.Tensor:
        """The C-vector w with ``A_s = traits @ w`` (Δ_i / N_SSN at the SSNs, zero elsewhere)."""
        w = torch.zeros(self.trait_dim)
        w[self.indices] = self.delta / self.n_ssn
        return w

    def activation(self, traits: torch.Tensor) -> torch.Tensor:
        return traits.float() @ self.weight_vector().to(traits.device)

    def probability(self, traits: torch.Tensor, clip: bool = True) -> torch.Tensor:
        return SpaceSet([self]).probabilities(traits, clip=clip)[:, 0]

    def with_reference(self, activations: np.ndarray | torch.Tensor) -> SemanticSpace:
        self.reference = Reference.fit(activations)
        return self

    # ------------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "class_name": self.class_name,
            "concept": self.concept,
            "backbone": self.backbone,
            "fingerprint": self.fingerprint,
            "trait_dim": self.trait_dim,
            "trait_layer": self.trait_layer,
            "masker": self.masker,
            "n_images": self.n_images,
            "reference": asdict(self.reference) if self.reference else None,
            "recipe": self.recipe,
            "evaluation": self.evaluation,
        }

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file, atomically."""
        return write_safetensors(
            path,
            {"indices": self.indices, "delta": self.delta},
            {METADATA_KEY: json.dumps(self.metadata())},
        )

    @classmethod
    def load(cls, path: str | Path) -> SemanticSpace:
        """Read a space file (no pickle) and validate it; errors name the file and the problem."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"{path}: no such space file")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                raw = (f.metadata() or {}).get(METADATA_KEY)
        except Exception as exc:
            raise SpaceError(f"{path}: not a valid safetensors file ({exc}); re-download or rebuild it") from exc
        if raw is None or not {"indices", "delta"} <= set(tensors):
            raise SpaceError(f"{path}: not an sxai semantic space (no '{METADATA_KEY}' metadata or tensors)")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"{path}: corrupted space metadata ({exc})") from exc
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SpaceError(f"{path}: space format version {version!r} is newer than this sxai "
                             f"understands ({FORMAT_VERSION}); upgrade sxai")
        try:
            reference = Reference(**meta["reference"]) if meta.get("reference") else None
            return cls(
                class_name=meta["class_name"], concept=meta["concept"], backbone=meta["backbone"],
                fingerprint=meta["fingerprint"], trait_dim=int(meta["trait_dim"]),
                indices=tensors["indices"], delta=tensors["delta"], reference=reference,
                trait_layer=meta.get("trait_layer", "gap"), masker=meta.get("masker", ""),
                n_images=int(meta.get("n_images", 0)), recipe=meta.get("recipe", {}),
                evaluation=meta.get("evaluation", {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpaceError(f"{path}: incomplete space metadata ({type(exc).__name__}: {exc})") from exc

    def check_compatible(self, model: Any, force: bool = False) -> None:
        """Refuse a model whose traits this space was not built on."""
        if model.trait_dim != self.trait_dim:
            raise SpaceError(
                f"space {self.key} was built on {self.backbone} with {self.trait_dim} trait channels, "
                f"but the model {model.name} has {model.trait_dim}")
        if force:
            return
        if model.fingerprint() != self.fingerprint:
            raise SpaceError(
                f"space {self.key} was built on backbone {self.backbone} (weights {self.fingerprint}), "
                f"but the model is {model.name} (weights {model.fingerprint()}); use the matching "
                "backbone, or force=True / --force if you know the traits agree")


class SpaceSet:
    """Many spaces scored at once: one matrix product on the pooled traits (no extra forward pass)."""

    def __init__(self, spaces: Iterable[SemanticSpace]) -> None:
        self.spaces = list(spaces)
        if not self.spaces:
            raise SpaceError("no semantic spaces given")
        dims = {s.trait_dim for s in self.spaces}
        if len(dims) != 1:
            raise SpaceError(f"spaces of different trait widths cannot be scored together: {sorted(dims)}")
        missing = [s.key for s in self.spaces if s.reference is None]
        if missing:
            raise SpaceError(f"spaces without a reference distribution cannot give probabilities: {missing}")
        self.weights = torch.stack([s.weight_vector() for s in self.spaces], dim=1)  # C × S
        # Each space reads only its few SSNs: gathering S×k channels beats the dense C×S product.
        width = max(s.n_ssn for s in self.spaces)
        self._index = np.zeros((len(self.spaces), width), dtype=np.int64)
        self._weight = np.zeros((len(self.spaces), width), dtype=np.float32)
        for row, space in enumerate(self.spaces):
            self._index[row, : space.n_ssn] = space.indices.numpy()
            self._weight[row, : space.n_ssn] = (space.delta / space.n_ssn).numpy()
        ref = [s.reference for s in self.spaces]
        self.mu = torch.tensor([r.mu for r in ref], dtype=torch.float64)
        self.sigma = torch.tensor([r.sigma for r in ref], dtype=torch.float64)
        self.cdf_min = self._cdf(torch.tensor([r.a_min for r in ref], dtype=torch.float64))
        self.cdf_max = self._cdf(torch.tensor([r.a_max for r in ref], dtype=torch.float64))
        self._mu, self._sigma = self.mu.numpy(), self.sigma.numpy()
        self._cdf_min = self.cdf_min.numpy()
        self._span = np.maximum((self.cdf_max - self.cdf_min).numpy(), 1e-12)

    def __len__(self) -> int:
        return len(self.spaces)

    def __iter__(self):
        return iter(self.spaces)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.spaces]

    def _cdf(self, a: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf((a - self.mu) / (self.sigma * math.sqrt(2.0))))

    def activations(self, traits: torch.Tensor) -> torch.Tensor:
        """B × S weighted activations A_s (no gradient: see ``SemanticSpace.activation`` for one)."""
        # NumPy on purpose: these arrays are tiny, and torch's thread pool costs more to wake (tens of
        # ms on a busy CPU) than the arithmetic itself.
        t = traits.detach().float().cpu().numpy()
        return torch.from_numpy((t[:, self._index] * self._weight).sum(axis=-1))

    def probabilities_from_activations(self, a: torch.Tensor, clip: bool = True) -> torch.Tensor:
        a = a.detach().cpu().double().numpy()
        p = (ndtr((a - self._mu) / self._sigma) - self._cdf_min) / self._span
        return torch.from_numpy(np.clip(p, 0.0, 1.0) if clip else p).float()

    def probabilities(self, traits: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """B × S semantic probabilities (``clip=False`` keeps values outside [0, 1] for diagnosis)."""
        return self.probabilities_from_activations(self.activations(traits), clip=clip)

    def check_compatible(self, model: Any, force: bool = False) -> None:
        for space in self.spaces:
            space.check_compatible(model, force=force)

    def classes(self) -> list[str]:
        return sorted({s.class_name for s in self.spaces})

    def concepts(self) -> list[str]:
        return sorted({s.concept for s in self.spaces})


def select_ssn(delta: np.ndarray | torch.Tensor, n_ssn: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n_ssn`` largest |Δ| (ties broken by lower index) and their signed Δ."""
    delta = np.asarray(delta.detach().cpu() if isinstance(delta, torch.Tensor) else delta, dtype=np.float64)
    if not 1 <= n_ssn <= delta.size:
        raise ValueError(f"n_ssn must be between 1 and {delta.size}, got {n_ssn}")
    order = np.lexsort((np.arange(delta.size), -np.abs(delta)))[:n_ssn]
    return order.astype(np.int64), delta[order]


def load_spaces(sources: Sequence[str | Path]) -> list[SemanticSpace]:
    """Space files, and folders of them (``*.safetensors`` inside, sorted)."""
    spaces: list[SemanticSpace] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            files = sorted(source.glob("*.safetensors"))
            if not files:
                raise SpaceError(f"{source}: no .safetensors space files in this folder")
            spaces.extend(SemanticSpace.load(f) for f in files)
        else:
            spaces.append(SemanticSpace.load(source))
    return spaces
