"""Semantic spaces: which trait channels respond to a concept, and how strongly an image shows it.

A space for (class, concept), say (cat, eyes), turns the GAP traits z of an image into an activation
A_s(z) and a semantic probability P_s(z) in [0, 1]. Two kinds exist:

- **v1 (SSN spaces, the paper's; recipes ``paper`` and ``tuned``)**: a few semantically sensitive
  neurons (SSNs) with signed weights Δ, ``A_s(z) = mean_i(Δ_i · z_i)``, and a normal fitted to A_s
  over a reference set: ``P_s = (Φ(A_s) − Φ(A_min)) / (Φ(A_max) − Φ(A_min))``, clipped to [0, 1].
- **v2 (probe spaces, recipe ``probe``, :mod:`sxai_plugins.spaces.probes`)**: a calibrated linear probe
  over all channels, ``A_s(z) = z · w + b`` (the probe's logit) and ``P_s = sigmoid(a · A_s + c)``
  (Platt calibration). Its SSNs are the channels of largest standardised weight, kept for display.

A v2 probe may also read the mean- and max-pooled outputs of earlier layers of the body (its
``layers``), appended to the traits: the same forward pass computes them (``TraitOutput.features``).
Either way P_s for many spaces is one matrix product on what the prediction pass computes. Files are safetensors (tensors ``indices``, ``delta``, and ``weight`` for v2) with the
rest as JSON metadata under ``sxai.space``: no pickle anywhere. Loading validates every number
and name, since a space may come from a stranger's Hub repository.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import expit, ndtr

from .._utils.errors import SpaceError
from .._utils.io import json_safe, write_safetensors

FORMAT_VERSION = (
    2  # the newest format this sxai reads and writes (v1 spaces are still written as 1)
)
METADATA_KEY = "sxai.space"
# Class and concept names end up in file names and SQL columns: letters, digits, '_' and '-',
# in dot-separated parts, and nothing that could name another folder.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
MAX_NAME_LENGTH = 100
# No CNN has a million trait channels; a file claiming more would only make loading allocate it.
MAX_TRAIT_DIM = 2**20
# Layer names are module paths inside a model's body ("model.blocks.4").
LAYER_PATTERN = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
MIN_REFERENCE_IMAGES = 3  # a reference normal is fitted to at least this many activations


def check_name(value: object, what: str, where: str = "space") -> str:
    """``value`` as a safe class or concept name, or a :class:`SpaceError` saying why not."""
    if (
        not isinstance(value, str)
        or not NAME_PATTERN.fullmatch(value)
        or len(value) > MAX_NAME_LENGTH
    ):
        raise SpaceError(
            f"{where}: {what} {value!r} is not a valid name (letters, digits, '_' and '-', parts "
            f"separated by single dots, at most {MAX_NAME_LENGTH} characters)"
        )
    return value


def _finite(value: object, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise SpaceError(f"{where}: {what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise SpaceError(f"{where}: {what} must be a finite number, got {value!r}")
    return number


def normal_link(a: Any, mu: Any, sigma: Any, a_min: Any, a_max: Any) -> Any:
    """The v1 link, A_s to P_s (not yet clipped): the reference normal's CDF at ``a``, rescaled
    so that ``a_min`` gives 0 and ``a_max`` 1. The one place the normal CDF is computed: NumPy
    arrays (broadcast over spaces) give NumPy, a torch tensor ``a`` gives a tensor differentiable
    in ``a`` (for attacks)."""
    cdf = torch.special.ndtr if isinstance(a, torch.Tensor) else ndtr
    lo, hi = ndtr((np.asarray(a_min) - mu) / sigma), ndtr((np.asarray(a_max) - mu) / sigma)
    return (cdf((a - mu) / sigma) - lo) / np.maximum(hi - lo, 1e-12)


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
        a = np.asarray(
            activations.detach().cpu() if isinstance(activations, torch.Tensor) else activations,
            dtype=np.float64,
        ).ravel()
        if a.size < MIN_REFERENCE_IMAGES:
            raise SpaceError(
                f"a reference distribution needs at least {MIN_REFERENCE_IMAGES} images, "
                f"got {a.size}"
            )
        mu, sigma = float(a.mean()), float(a.std(ddof=1))
        if not sigma > 0:
            raise SpaceError(
                "all reference activations are equal: the space does not vary over the reference set"
            )
        if not np.isfinite(a).all():
            raise SpaceError("the reference activations contain NaN or infinite values")
        # imported here: scipy.stats costs about a second to import, which every process that
        # only unpickles or applies spaces (e.g. each Ray scoring actor) would pay for nothing
        from scipy import stats

        (_osm, _osr), (_slope, _intercept, r) = stats.probplot(a, dist="norm")
        return cls(mu, sigma, float(a.min()), float(a.max()), int(a.size), float(r * r))

    @classmethod
    def from_metadata(cls, raw: object, where: str) -> Reference:
        """A reference read from a file, every number checked (a Hub repo writes its own hashes)."""
        if not isinstance(raw, dict):
            raise SpaceError(
                f"{where}: the reference distribution must be an object, got {type(raw).__name__}"
            )
        unknown = set(raw) - {"mu", "sigma", "a_min", "a_max", "n", "qq_r2"}
        if unknown:
            raise SpaceError(f"{where}: unknown reference fields {sorted(unknown)}")
        try:
            values = {k: raw[k] for k in ("mu", "sigma", "a_min", "a_max", "n")}
        except KeyError as exc:
            raise SpaceError(f"{where}: the reference distribution lacks {exc}") from None
        mu, sigma = (
            _finite(values["mu"], "reference mu", where),
            _finite(values["sigma"], "reference sigma", where),
        )
        a_min = _finite(values["a_min"], "reference a_min", where)
        a_max = _finite(values["a_max"], "reference a_max", where)
        n = values["n"]
        if not sigma > 0:
            raise SpaceError(f"{where}: reference sigma must be positive, got {sigma}")
        if not a_min < a_max:
            raise SpaceError(f"{where}: reference a_min ({a_min}) must be below a_max ({a_max})")
        if isinstance(n, bool) or not isinstance(n, int) or n < MIN_REFERENCE_IMAGES:
            raise SpaceError(
                f"{where}: reference n must be an integer of at least {MIN_REFERENCE_IMAGES}, "
                f"got {n!r}"
            )
        qq = raw.get("qq_r2", float("nan"))
        qq = float("nan") if qq is None else _finite(qq, "reference qq_r2", where)
        return cls(mu, sigma, a_min, a_max, n, qq)

    def link(self, a: Any) -> Any:
        """:func:`normal_link` of this reference (unclipped P_s of the activations ``a``)."""
        return normal_link(a, self.mu, self.sigma, self.a_min, self.a_max)


@dataclass
class ProbeHead:
    """A v2 space's calibrated probe: ``A_s = traits · weight + bias``, ``P_s = sigmoid(slope · A_s +
    intercept)``. The slope is positive: more evidence never lowers P_s."""

    weight: torch.Tensor  # C, float32, on raw traits
    bias: float
    slope: float
    intercept: float
    scale: torch.Tensor | None = None  # C, the traits' spread the probe was standardised by
    # (name, width) of each body layer whose pooled outputs follow the traits in the features
    layers: tuple[tuple[str, int], ...] = ()

    @property
    def feature(self) -> str:
        return "gap+pooled" if self.layers else "gap"

    def check(self, trait_dim: int, where: str) -> None:
        self.layers = tuple(_layer_entry(entry, where) for entry in self.layers)
        if len({name for name, _ in self.layers}) != len(self.layers):
            raise SpaceError(f"{where}: the probe lists a layer twice")
        dim = trait_dim + sum(width for _, width in self.layers)
        self.weight = torch.as_tensor(self.weight, dtype=torch.float32).flatten()
        if self.weight.numel() != dim:
            raise SpaceError(
                f"{where}: probe weight has {self.weight.numel()} values for {dim} features "
                f"({trait_dim} trait channels"
                + (f" and {dim - trait_dim} pooled layer outputs)" if self.layers else ")")
            )
        if not torch.isfinite(self.weight).all():
            raise SpaceError(f"{where}: probe weight contains NaN or infinite values")
        if self.scale is not None:
            self.scale = torch.as_tensor(self.scale, dtype=torch.float32).flatten()
            if self.scale.numel() != dim or not (
                torch.isfinite(self.scale).all() and (self.scale > 0).all()
            ):
                raise SpaceError(f"{where}: probe scale must hold {dim} finite positive values")
        self.bias = _finite(self.bias, "probe bias", where)
        self.slope = _finite(self.slope, "calibration slope", where)
        self.intercept = _finite(self.intercept, "calibration intercept", where)
        if not self.slope > 0:
            raise SpaceError(f"{where}: calibration slope must be positive, got {self.slope}")

    def metadata(self) -> dict[str, Any]:
        return {
            "bias": self.bias,
            "calibration": {"slope": self.slope, "intercept": self.intercept},
            "feature": self.feature,
            **({"layers": [list(entry) for entry in self.layers]} if self.layers else {}),
        }

    @classmethod
    def layers_from_metadata(cls, raw: dict, where: str) -> tuple[tuple[str, int], ...]:
        feature = raw.get("feature", "gap")
        if feature == "gap":
            return ()
        if feature != "gap+pooled":
            raise SpaceError(
                f"{where}: probe feature {feature!r} is not supported ('gap' or 'gap+pooled'); "
                "a newer sxai may read it"
            )
        layers = raw.get("layers")
        if not isinstance(layers, list) or not layers:
            raise SpaceError(f"{where}: a 'gap+pooled' probe needs a list of [layer, width] pairs")
        return tuple(_layer_entry(entry, where) for entry in layers)

    def standardised(self) -> torch.Tensor:
        """The weights on standardised traits (their sizes compare channels); raw weights without
        a stored scale."""
        return self.weight * self.scale if self.scale is not None else self.weight.clone()


def _layer_entry(entry: object, where: str) -> tuple[str, int]:
    """A ``(layer name, width)`` pair, validated (it comes from a file)."""
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 2
        or not isinstance(entry[0], str)
        or isinstance(entry[1], bool)
        or not isinstance(entry[1], int)
    ):
        raise SpaceError(f"{where}: probe layer entry {entry!r} is not a [name, width] pair")
    name, width = entry
    if len(name) > MAX_NAME_LENGTH or not LAYER_PATTERN.fullmatch(name):
        raise SpaceError(f"{where}: probe layer name {name!r} is not a module path")
    if not 1 <= width <= MAX_TRAIT_DIM:
        raise SpaceError(f"{where}: probe layer {name!r} has width {width}")
    return name, width


def feature_tensor(x: Any, layers: Sequence[str] = ()) -> torch.Tensor:
    """What a reader of ``layers`` takes from a :class:`~sxai_plugins.models.TraitOutput` (the traits,
    then those layers' pooled outputs), or ``x`` itself when it is a tensor or array of them."""
    if hasattr(x, "features") and hasattr(x, "traits"):
        try:
            return x.features(layers)
        except ValueError as exc:
            raise SpaceError(str(exc)) from None
    return torch.as_tensor(x)


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
    probe: ProbeHead | None = None  # v2 spaces: the calibrated probe that gives A_s and P_s

    def __post_init__(self) -> None:
        check_name(self.class_name, "class name")
        check_name(self.concept, "concept name")
        where = f"space {self.key}"
        if (
            isinstance(self.trait_dim, bool)
            or not isinstance(self.trait_dim, int)
            or not 1 <= self.trait_dim <= MAX_TRAIT_DIM
        ):
            raise SpaceError(
                f"{where}: trait_dim must be an integer from 1 to {MAX_TRAIT_DIM}, got {self.trait_dim!r}"
            )
        self.indices = torch.as_tensor(self.indices).flatten()
        if (
            self.indices.is_floating_point()
            or self.indices.is_complex()
            or self.indices.dtype == torch.bool
        ):
            raise SpaceError(f"{where}: SSN indices must be integers, got {self.indices.dtype}")
        self.indices = self.indices.to(torch.int64)
        self.delta = torch.as_tensor(self.delta, dtype=torch.float32).flatten()
        if self.indices.numel() != self.delta.numel() or self.indices.numel() == 0:
            raise SpaceError(
                f"{where}: {self.indices.numel()} indices but {self.delta.numel()} weights"
            )
        if int(self.indices.min()) < 0 or int(self.indices.max()) >= self.trait_dim:
            raise SpaceError(f"{where}: SSN indices must lie in [0, {self.trait_dim})")
        if len(set(self.indices.tolist())) != self.indices.numel():
            raise SpaceError(f"{where}: duplicate SSN indices")
        if not torch.isfinite(self.delta).all():
            raise SpaceError(f"{where}: SSN weights contain NaN or infinite values")
        if self.probe is None and not bool(self.delta.abs().sum() > 0):
            raise SpaceError(f"{where}: every SSN weight is zero, so the space reads nothing")
        if self.probe is not None:
            self.probe.check(self.trait_dim, where)

    @property
    def key(self) -> str:
        return f"{self.class_name}.{self.concept}"

    @property
    def layers(self) -> tuple[tuple[str, int], ...]:
        """``(name, width)`` of the body layers whose pooled outputs the space reads besides the traits."""
        return self.probe.layers if self.probe is not None else ()

    @property
    def feature_dim(self) -> int:
        return self.trait_dim + sum(width for _, width in self.layers)

    @property
    def n_ssn(self) -> int:
        return int(self.indices.numel())

    @property
    def format_version(self) -> int:
        return 2 if self.probe is not None else 1

    @property
    def bias(self) -> float:
        return self.probe.bias if self.probe is not None else 0.0

    def weight_vector(self) -> torch.Tensor:
        """The vector w with ``A_s = features @ w + bias``: the probe's weights (v2), or Δ_i / N_SSN
        at the SSNs and zero elsewhere (v1). Its first ``trait_dim`` entries weigh the traits."""
        if self.probe is not None:
            return self.probe.weight.clone()
        w = torch.zeros(self.trait_dim)
        w[self.indices] = self.delta / self.n_ssn
        return w

    def activation(self, features: Any) -> torch.Tensor:
        """A_s of each row of ``features`` (a ``TraitOutput``, or traits followed by the space's pooled
        layer outputs); differentiable: attributions and attacks use it."""
        x = feature_tensor(features, [name for name, _ in self.layers])
        _check_width(x, self.feature_dim, f"space {self.key}", self.layers)
        return x.float() @ self.weight_vector().to(x.device) + self.bias

    def probability(self, features: Any, clip: bool = True) -> torch.Tensor:
        return SpaceSet([self]).probabilities(features, clip=clip)[:, 0]

    def with_reference(self, activations: np.ndarray | torch.Tensor) -> SemanticSpace:
        self.reference = Reference.fit(activations)
        return self

    # ------------------------------------------------------------------------------- files
    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
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
            **({"probe": self.probe.metadata()} if self.probe is not None else {}),
        }

    def save(self, path: str | Path) -> Path:
        """Write one safetensors file, atomically (JSON metadata without NaN, which is not JSON)."""
        tensors = {"indices": self.indices, "delta": self.delta}
        if self.probe is not None:
            tensors["weight"] = self.probe.weight
            if self.probe.scale is not None:
                tensors["scale"] = self.probe.scale
        return write_safetensors(
            path, tensors, {METADATA_KEY: json.dumps(json_safe(self.metadata()), allow_nan=False)}
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
            raise SpaceError(
                f"{path}: not a valid safetensors file ({exc}); re-download or rebuild it"
            ) from exc
        if raw is None or not {"indices", "delta"} <= set(tensors):
            raise SpaceError(
                f"{path}: not an sxai semantic space (no '{METADATA_KEY}' metadata or tensors)"
            )
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SpaceError(f"{path}: corrupted space metadata ({exc})") from exc
        where = str(path)
        if not isinstance(meta, dict):
            raise SpaceError(f"{where}: the space metadata must be a JSON object")
        version = meta.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise SpaceError(
                f"{where}: space format version {version!r} is not valid; rebuild the space"
            )
        if version > FORMAT_VERSION:
            raise SpaceError(
                f"{where}: space format version {version} is newer than this sxai "
                f"understands ({FORMAT_VERSION}); upgrade sxai"
            )
        try:
            reference = (
                Reference.from_metadata(meta["reference"], where) if meta.get("reference") else None
            )
            probe = None
            if version >= 2:
                raw = meta.get("probe")
                if not isinstance(raw, dict) or "weight" not in tensors:
                    raise SpaceError(
                        f"{where}: a format-2 space needs 'probe' metadata and a 'weight' tensor"
                    )
                calibration = raw.get("calibration")
                if not isinstance(calibration, dict):
                    raise SpaceError(f"{where}: the probe has no 'calibration' object")
                probe = ProbeHead(
                    tensors["weight"],
                    raw.get("bias"),
                    calibration.get("slope"),
                    calibration.get("intercept"),
                    tensors.get("scale"),
                    ProbeHead.layers_from_metadata(raw, where),
                )
            trait_dim = meta["trait_dim"]
            for name in ("backbone", "fingerprint"):
                if not isinstance(meta[name], str):
                    raise SpaceError(f"{where}: {name} must be a string, got {meta[name]!r}")
            return cls(
                class_name=check_name(meta["class_name"], "class name", where),
                concept=check_name(meta["concept"], "concept name", where),
                backbone=meta["backbone"],
                fingerprint=meta["fingerprint"],
                trait_dim=trait_dim,
                indices=tensors["indices"],
                delta=tensors["delta"],
                reference=reference,
                trait_layer=str(meta.get("trait_layer", "gap")),
                masker=str(meta.get("masker", "")),
                n_images=int(meta.get("n_images", 0)),
                recipe=_dict(meta.get("recipe"), "recipe", where),
                evaluation=_dict(meta.get("evaluation"), "evaluation", where),
                probe=probe,
            )
        except SpaceError as exc:
            message = str(exc)
            raise SpaceError(
                message if message.startswith(where) else f"{where}: {message}"
            ) from None
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise SpaceError(
                f"{where}: incomplete or invalid space metadata ({type(exc).__name__}: {exc})"
            ) from exc

    def check_compatible(self, model: Any, force: bool = False) -> None:
        """Refuse a model whose traits this space was not built on."""
        check_model_fits(
            model,
            self.backbone,
            self.fingerprint,
            self.trait_dim,
            force=force,
            subject=f"space {self.key} was",
        )


def _check_width(x: torch.Tensor, dim: int, what: str, layers: Sequence[tuple[str, int]]) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        read = (
            f"the traits and the pooled outputs of {', '.join(n for n, _ in layers)} ({dim} values)"
            if layers
            else f"{dim} trait channels"
        )
        hint = (
            "; pass the model's output after loading the spaces with load_space_set (or call "
            "model.pool_layers(spaces.layer_names) first)"
            if layers
            else ""
        )
        raise SpaceError(f"{what}: expected {read}, got shape {tuple(x.shape)}{hint}")


def check_model_fits(
    model: Any,
    backbone: str,
    fingerprint: str,
    trait_dim: int,
    *,
    force: bool = False,
    subject: str = "the spaces were",
) -> None:
    """Refuse a model whose traits spaces built on ``backbone`` (weights ``fingerprint``) do not fit.

    A different trait width is always refused; different weights unless ``force``. ``subject``
    starts the message ("space cat.eyes was", "repo@main: the spaces were").
    """
    if model.trait_dim != trait_dim:
        raise SpaceError(
            f"{subject} built on {backbone} with {trait_dim} trait channels, "
            f"but the model {model.name} has {model.trait_dim}"
        )
    if force:
        return
    if model.fingerprint() != fingerprint:
        raise SpaceError(
            f"{subject} built on backbone {backbone} (weights {fingerprint}), "
            f"but the model is {model.name} (weights {model.fingerprint()}); use the matching "
            "backbone, or force=True / --force if you know the traits agree"
        )


class SpaceSet:
    """Many spaces scored at once: one matrix product on the pooled traits (no extra forward pass),
    then each space's own link from A_s to P_s (v1: the reference normal; v2: the Platt sigmoid)."""

    def __init__(self, spaces: Iterable[SemanticSpace]) -> None:
        self.spaces = list(spaces)
        if not self.spaces:
            raise SpaceError("no semantic spaces given")
        dims = {s.trait_dim for s in self.spaces}
        if len(dims) != 1:
            raise SpaceError(
                f"spaces of different trait widths cannot be scored together: {sorted(dims)}"
            )
        missing = [s.key for s in self.spaces if s.probe is None and s.reference is None]
        if missing:
            raise SpaceError(
                f"spaces without a reference distribution cannot give probabilities: {missing}"
            )
        # The set's features: the traits, then every layer any space reads, in first-seen order;
        # each space's weights sit at its own layers' columns.
        widths: dict[str, int] = {}
        for space in self.spaces:
            for name, width in space.layers:
                if widths.setdefault(name, width) != width:
                    raise SpaceError(
                        f"spaces disagree on the width of layer {name!r}: {widths[name]} and {width}"
                    )
        self.layers = tuple(widths.items())
        c = self.spaces[0].trait_dim
        starts = dict(zip(widths, np.cumsum([c, *widths.values()])[:-1].tolist()))
        self.feature_dim = c + sum(widths.values())
        # NumPy on purpose: these arrays are small, and torch's thread pool costs more to wake (tens
        # of ms on a busy CPU) than the arithmetic itself.
        self._weights = np.zeros((self.feature_dim, len(self.spaces)), dtype=np.float32)
        for j, space in enumerate(self.spaces):
            w = space.weight_vector().numpy()
            self._weights[:c, j] = w[:c]
            offset = c
            for name, width in space.layers:
                self._weights[starts[name] : starts[name] + width, j] = w[offset : offset + width]
                offset += width
        self.bias = np.array([s.bias for s in self.spaces], dtype=np.float32)
        self.is_probe = np.array([s.probe is not None for s in self.spaces])
        # v1 link: the reference normal rescaled to [Φ(a_min), Φ(a_max)]; v2 link: a sigmoid.
        # Unused entries hold harmless values so that both links run vectorised over all spaces.
        ref = [
            s.reference if s.probe is None else Reference(0.0, 1.0, -1.0, 1.0, 3, 1.0)
            for s in self.spaces
        ]
        self._mu, self._sigma = np.array([r.mu for r in ref]), np.array([r.sigma for r in ref])
        self._a_min, self._a_max = (
            np.array([r.a_min for r in ref]),
            np.array([r.a_max for r in ref]),
        )
        self._slope = np.array([s.probe.slope if s.probe else 1.0 for s in self.spaces])
        self._intercept = np.array([s.probe.intercept if s.probe else 0.0 for s in self.spaces])

    def __len__(self) -> int:
        return len(self.spaces)

    def __iter__(self):
        return iter(self.spaces)

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.spaces]

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The body layers whose pooled outputs the set reads (``TraitModel.pool_layers``)."""
        return tuple(name for name, _ in self.layers)

    def activations(self, features: Any) -> torch.Tensor:
        """B × S activations A_s of a ``TraitOutput``, or of traits followed by the pooled outputs of
        ``layer_names`` (no gradient: see ``SemanticSpace.activation`` for one)."""
        x = feature_tensor(features, self.layer_names)
        _check_width(x, self.feature_dim, "these spaces", self.layers)
        t = x.detach().float().cpu().numpy()
        return torch.from_numpy(t @ self._weights + self.bias)

    def differentiable_activations(self, features: Any) -> torch.Tensor:
        """:meth:`activations` in torch, on the features' device, with gradients (attacks use it)."""
        x = feature_tensor(features, self.layer_names)
        _check_width(x, self.feature_dim, "these spaces", self.layers)
        weights = torch.from_numpy(self._weights).to(x.device)
        return x.float() @ weights + torch.from_numpy(self.bias).to(x.device)

    def probabilities_from_activations(self, a: torch.Tensor, clip: bool = True) -> torch.Tensor:
        a = a.detach().cpu().double().numpy()
        normal = normal_link(a, self._mu, self._sigma, self._a_min, self._a_max)
        if clip:
            normal = np.clip(normal, 0.0, 1.0)
        p = np.where(self.is_probe, expit(self._slope * a + self._intercept), normal)
        return torch.from_numpy(p).float()

    def probabilities(self, features: Any, clip: bool = True) -> torch.Tensor:
        """B × S semantic probabilities of what ``activations`` takes (``clip=False`` keeps values
        outside [0, 1] for diagnosis)."""
        return self.probabilities_from_activations(self.activations(features), clip=clip)

    def check_compatible(self, model: Any, force: bool = False) -> None:
        for space in self.spaces:
            space.check_compatible(model, force=force)

    def _layers_with(self, model: Any) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*model.pooled_layers, *self.layer_names)))

    def prepare(self, model: Any) -> None:
        """Make ``model``'s forward passes return what these spaces read: the pooled outputs of
        ``layer_names`` besides the traits (nothing extra when the spaces read the traits alone)."""
        model.pool_layers(self._layers_with(model))

    def pooling(self, model: Any):
        """:meth:`prepare` for the duration of a ``with`` block (``TraitModel.pooling``)."""
        return model.pooling(self._layers_with(model))

    def classes(self) -> list[str]:
        return sorted({s.class_name for s in self.spaces})

    def concepts(self) -> list[str]:
        return sorted({s.concept for s in self.spaces})


def _dict(value: object, what: str, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{where}: {what} must be a JSON object, got {type(value).__name__}")
    return value


def select_ssn(delta: np.ndarray | torch.Tensor, n_ssn: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n_ssn`` largest |Δ| (ties broken by lower index) and their signed Δ."""
    delta = np.asarray(
        delta.detach().cpu() if isinstance(delta, torch.Tensor) else delta, dtype=np.float64
    )
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
