"""A calibrated adversarial-example detector on the semantic spaces (issue 12).

Every image gets a **detection score** from the prediction pass alone (logits and pooled traits;
the spaces are a matrix product on the traits), so scoring costs nothing beyond prediction.
Two scores exist:

- ``gap`` (default): how much more confident the classifier is than the semantic evidence for its
  prediction supports. With ``m`` the logit margin of the predicted class over the runner-up class
  and ``s`` the semantic margin (mean P_s over the predicted class's spaces minus the mean over
  the runner-up's, in [−1, 1], like the paper's ΔP), the score is the residual
  ``m − (β·s + c)``, with ``β ≥ 0`` and ``c`` fitted (least squares) on clean calibration images:
  clean images have the confidence their semantics explain; an adversarial image has more.
- ``paper``: the paper's rule as a score, ``max(ℓ(P_(1)) − ℓ(0.99), ℓ(P_(2)) − ℓ(0.9))`` with ℓ
  the logit and ``P_(1) ≥ P_(2)`` the two largest semantic probabilities: it is above 0 exactly
  when the paper's rule flags the image (one P above 0.99 or two above 0.9).

The threshold is **calibrated on clean images** to a false-positive budget α: by default the
order statistic of the n calibration scores for which the false-positive rate is at most α with
probability 0.9 over the calibration draw (a binomial bound); without that confidence, the
``⌈(n + 1)(1 − α)⌉``-th smallest (the split-conformal quantile: at most α on average). The detector
(score, fit, threshold, budget) is stored as ``detector.json`` beside the space files; ``sxai
explain`` reads it and flags images whose score is above the threshold.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.errors import SpaceError
from .._utils.io import write_json
from ..spaces.space import SemanticSpace, SpaceSet
from . import SCORES

__all__ = [
    "DETECTOR_FILE",
    "SCORES",
    "Detector",
    "adaptive_loss",
    "score_aware_loss",
    "calibrate",
    "conformal_threshold",
    "DetectorWarning",
    "load_detector",
    "spaces_digest",
    "score_parts",
    "space_logits",
]

DETECTOR_FILE = "detector.json"
FORMAT = "sxai.detector"
VERSION = 1
P_CLIP = 1e-6  # semantic probabilities are clipped to [P_CLIP, 1 − P_CLIP] before the logit
PAPER_SINGLE, PAPER_MULTI = 0.99, 0.9  # the paper's rule: one P_s above 0.99, or two above 0.9
FPR = 0.05  # the default false-positive budget on clean images
CONFIDENCE = 0.9  # the default probability that the budget holds over the calibration draw
ADAPTIVE_CONFIDENCE = 0.9  # the attackers stop raising the wrong class's confidence beyond this
FLAG_SENTENCE = "The semantics do not support this prediction"


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), P_CLIP, 1 - P_CLIP)
    return np.log(p) - np.log1p(-p)


def _class_masks(spaces: SpaceSet, class_names: Sequence[str]) -> np.ndarray:
    """K × S: which spaces belong to each class."""
    return np.array([[s.class_name == c for s in spaces] for c in class_names], dtype=bool)


def score_parts(
    logits: torch.Tensor | np.ndarray,
    probabilities: torch.Tensor | np.ndarray,
    spaces: SpaceSet,
    class_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """Per image: ``margin`` (logit margin of the prediction over the runner-up), ``semantic``
    (the semantic margin, see the module docstring; 0 where neither class has spaces) and
    ``paper`` (the paper's rule as a score). ``B×K`` logits, ``B×S`` semantic probabilities."""
    z = np.asarray(
        logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64
    )
    p = np.asarray(
        probabilities.detach().cpu() if isinstance(probabilities, torch.Tensor) else probabilities,
        dtype=np.float64,
    )
    if z.ndim != 2 or p.ndim != 2 or len(z) != len(p):
        raise ValueError(
            f"score_parts needs B×K logits and B×S probabilities, got {z.shape} and {p.shape}"
        )
    if z.shape[1] != len(class_names) or p.shape[1] != len(spaces):
        raise ValueError(
            f"{z.shape[1]} logits for {len(class_names)} classes, or {p.shape[1]} "
            f"probabilities for {len(spaces)} spaces"
        )
    rows = np.arange(len(z))
    if z.shape[1] > 1:
        order = np.argsort(-z, axis=1, kind="stable")
        pred, runner = order[:, 0], order[:, 1]
        margin = z[rows, pred] - z[rows, runner]
    else:  # one class: no rival, the margin is the logit itself
        pred = runner = np.zeros(len(z), dtype=int)
        margin = z[:, 0]
    masks = _class_masks(spaces, class_names)  # K × S
    mean_p = (p @ masks.T) / np.maximum(masks.sum(1), 1)  # B × K (0 for a class without spaces)
    semantic = mean_p[rows, pred] - (mean_p[rows, runner] if z.shape[1] > 1 else 0.0)
    top = -np.sort(-p, axis=1)
    second = top[:, 1] if p.shape[1] > 1 else np.full(len(p), P_CLIP)
    paper = np.maximum(
        _logit(top[:, 0]) - _logit(PAPER_SINGLE), _logit(second) - _logit(PAPER_MULTI)
    )
    return {"margin": margin, "semantic": semantic, "paper": paper}


def conformal_threshold(
    scores: np.ndarray | Sequence[float], fpr: float, confidence: float | None = None
) -> float:
    """A threshold on clean calibration scores for a false-positive budget ``fpr``.

    Without ``confidence``: the ``⌈(n + 1)(1 − fpr)⌉``-th smallest score (split conformal), so that
    a new clean score exchangeable with them lies above it with probability at most ``fpr``
    (averaged over calibration draws). With ``confidence`` γ: the ``(n − j)``-th smallest, ``j`` the
    largest count with ``P(Binomial(n, fpr) ≤ j) ≤ 1 − γ``, so that the threshold's false-positive
    rate is at most ``fpr`` with probability at least γ over the calibration draw (a stricter
    promise, hence a higher threshold)."""
    from scipy.stats import binom

    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if not 0 < fpr < 1:
        raise ValueError(f"the false-positive budget must be in (0, 1), got {fpr}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"the confidence must be in (0, 1), got {confidence}")
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("calibration needs finite scores of at least one clean image")
    if confidence is None:
        k = math.ceil((s.size + 1) * (1 - fpr))
        needed = math.ceil(1 / fpr - 1)
    else:
        counts = np.arange(s.size)
        allowed = counts[binom.cdf(counts, s.size, fpr) <= 1 - confidence]
        k = s.size - int(allowed.max()) if allowed.size else s.size + 1
        needed = math.ceil(math.log(1 - confidence) / math.log(1 - fpr))
    if k > s.size:
        raise ValueError(
            f"a false-positive budget of {fpr:g}"
            + (f" at confidence {confidence:g}" if confidence is not None else "")
            + f" needs at least {needed} calibration images, got {s.size}"
        )
    return float(s[k - 1])


@dataclass
class Detector:
    """A calibrated detection score: ``flag = score > threshold``."""

    score: str = "gap"
    threshold: float = 0.0
    fpr: float = FPR  # the false-positive budget the threshold was calibrated to
    confidence: float | None = (
        CONFIDENCE  # probability that the budget holds (None: holds on average)
    )
    beta: float = 0.0  # gap score: margin explained by β·semantic + intercept
    intercept: float = 0.0
    n_calibration: int = 0
    calibration_fpr: float = float("nan")  # share of the calibration images above the threshold
    spaces: list[str] = field(default_factory=list)  # the space keys it was calibrated with
    spaces_digest: str = ""  # their weights and links to P_s (spaces_digest())
    classes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    calibration_source: str = ""
    calibration_files: list[str] = field(default_factory=list)  # relative to calibration_source

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise SpaceError(
                f"detector score {self.score!r} is unknown; choose from {', '.join(SCORES)}"
            )

    def scores_from_parts(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        if self.score == "paper":
            return parts["paper"]
        return parts["margin"] - (self.beta * parts["semantic"] + self.intercept)

    def scores(
        self, logits, probabilities, spaces: SpaceSet, class_names: Sequence[str]
    ) -> np.ndarray:
        """One score per image from the prediction pass's logits and the spaces' P_s."""
        return self.scores_from_parts(score_parts(logits, probabilities, spaces, class_names))

    def check_fits(
        self, spaces: SpaceSet, class_names: Sequence[str], where: str = "detector"
    ) -> None:
        """Refuse spaces or classes other than those the detector was calibrated with."""
        if self.spaces and list(self.spaces) != spaces.keys:
            raise SpaceError(
                f"{where}: calibrated for the spaces {', '.join(self.spaces)}, but the loaded "
                f"spaces are {', '.join(spaces.keys)}; recalibrate it (sxai calibrate-detector)"
            )
        if self.spaces_digest and self.spaces_digest != spaces_digest(spaces):
            raise SpaceError(
                f"{where}: calibrated for other versions of the spaces {', '.join(self.spaces)} "
                "(their weights or links to P_s changed); recalibrate it (sxai calibrate-detector)"
            )
        if self.classes and list(self.classes) != list(class_names):
            raise SpaceError(
                f"{where}: calibrated for the classes {', '.join(self.classes)}, but the model "
                f"has {', '.join(class_names)}; recalibrate it (sxai calibrate-detector)"
            )

    def calibration_paths(self) -> set[Path]:
        """The calibration images, resolved (to refuse measuring a false-positive rate on them)."""
        root = Path(self.calibration_source)
        return {(root / f).resolve() for f in self.calibration_files}

    def verdict(self, score: float) -> dict[str, Any]:
        """``{"flag", "score", "threshold", "fpr"}`` for one image (what ``explain --json`` carries)."""
        return {
            "flag": bool(score > self.threshold),
            "score": float(score),
            "threshold": self.threshold,
            "fpr": self.fpr,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """``detector.json`` (or the given file), written atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / DETECTOR_FILE
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, raw: object, where: str = "detector") -> Detector:
        """A detector read from a file, every field checked (a space folder may be a stranger's)."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise SpaceError(f'{where}: not an sxai detector (no "format": "{FORMAT}")')
        version = raw.get("version")
        if version != VERSION:
            raise SpaceError(
                f"{where}: detector version {version!r} is not one this sxai reads ({VERSION})"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(raw) - known - {"format", "version"}
        if unknown:
            raise SpaceError(f"{where}: unknown detector fields {sorted(unknown)}")
        values = {k: raw[k] for k in known if k in raw}
        for key in ("threshold", "fpr", "beta", "intercept", "calibration_fpr", "confidence"):
            if key not in values:
                continue
            v = values[key]
            if key in ("calibration_fpr", "confidence") and v is None:
                values[key] = float("nan") if key == "calibration_fpr" else None
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpaceError(f"{where}: {key} must be a finite number, got {v!r}")
            values[key] = float(v)
        if "threshold" not in values or "fpr" not in values:
            raise SpaceError(f"{where}: a detector needs 'threshold' and 'fpr'")
        if not 0 < values["fpr"] < 1:
            raise SpaceError(f"{where}: fpr must be in (0, 1), got {values['fpr']}")
        if values.get("confidence") is not None and not 0 < values["confidence"] < 1:
            raise SpaceError(
                f"{where}: confidence must be in (0, 1) or null, got {values['confidence']}"
            )
        if values.get("beta", 0.0) < 0:
            raise SpaceError(f"{where}: beta must not be negative, got {values['beta']}")
        n = values.get("n_calibration", 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SpaceError(f"{where}: n_calibration must be a non-negative integer, got {n!r}")
        for key in ("spaces", "classes", "calibration_files"):
            v = values.get(key, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise SpaceError(f"{where}: {key} must be a list of names")
        for key in ("score", "fingerprint", "calibration_source", "spaces_digest"):
            if key in values and not isinstance(values[key], str):
                raise SpaceError(f"{where}: {key} must be a string")
        try:
            return cls(**values)
        except SpaceError as exc:
            raise SpaceError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Detector:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpaceError(f"{path}: no such detector file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpaceError(f"{path}: not a JSON detector file ({exc})") from None
        return cls.from_dict(raw, str(path))


def calibrate(
    logits,
    probabilities,
    spaces: SpaceSet,
    class_names: Sequence[str],
    fpr: float = FPR,
    score: str = "gap",
    *,
    confidence: float | None = CONFIDENCE,
    fingerprint: str = "",
    source: str = "",
    files: Sequence[str] = (),
) -> Detector:
    """A detector whose threshold holds ``fpr`` on clean images like these (logits and P_s of clean
    calibration images, from one prediction pass), with probability ``confidence`` over the draw
    of these images (None: on average; see :func:`conformal_threshold`). The ``gap`` fit uses the
    same images."""
    parts = score_parts(logits, probabilities, spaces, class_names)
    beta = intercept = 0.0
    if score == "gap":
        s, m = parts["semantic"], parts["margin"]
        if np.ptp(s) > 0:
            beta, intercept = (float(v) for v in np.polyfit(s, m, 1))
        if beta < 0 or np.ptp(s) == 0:  # more semantic evidence never excuses less confidence
            beta, intercept = 0.0, float(m.mean())
    detector = Detector(
        score=score,
        fpr=float(fpr),
        confidence=confidence,
        beta=beta,
        intercept=intercept,
        n_calibration=len(parts["margin"]),
        spaces=spaces.keys,
        spaces_digest=spaces_digest(spaces),
        classes=list(class_names),
        fingerprint=fingerprint,
        calibration_source=source,
        calibration_files=list(files),
    )
    values = detector.scores_from_parts(parts)
    detector.threshold = conformal_threshold(values, fpr, confidence)
    detector.calibration_fpr = float((values > detector.threshold).mean())
    return detector


class DetectorWarning(UserWarning):
    """A stored detector that does not fit the loaded spaces (it is then not used)."""


def load_detector(
    folder: str | Path | None, spaces: SpaceSet, class_names: Sequence[str], strict: bool = False
) -> Detector | None:
    """The ``detector.json`` stored in a space folder, checked against the loaded spaces; None
    when the folder has none (or there is no single folder). A detector calibrated for other
    spaces or classes is an error with ``strict``, else a :class:`DetectorWarning` and None (a
    stale detector never judges images, and never stops ``explain``); an unreadable one is always
    an error."""
    if folder is None or not Path(folder).is_dir():
        return None
    path = Path(folder) / DETECTOR_FILE
    if not path.is_file():
        return None
    detector = Detector.load(path)
    try:
        detector.check_fits(spaces, class_names, str(path))
    except SpaceError as exc:
        if strict:
            raise
        warnings.warn(f"{exc}; detection is off until then", DetectorWarning, stacklevel=2)
        return None
    return detector


def spaces_digest(spaces: SpaceSet) -> str:
    """A digest of what P_s depends on: every space's key, weights, bias and link to P_s."""
    h = hashlib.sha256()
    for space in spaces:
        link = (
            space.key,
            space.bias,
            asdict(space.reference) if space.reference else None,
            space.probe.metadata() if space.probe is not None else None,
        )
        h.update(json.dumps(link, sort_keys=True, default=str).encode())
        h.update(space.weight_vector().numpy().astype(np.float32).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------ differentiable pieces
def space_logits(spaces: SpaceSet | Sequence[SemanticSpace], traits: torch.Tensor) -> torch.Tensor:
    """``B×S`` logits of P_s, differentiable in ``traits`` (for attacks): v2 spaces give their
    calibration ``slope·A_s + intercept`` exactly; v1 spaces the logit of their clipped normal link
    (flat where P_s is clipped at 0 or 1, as P_s itself)."""
    spaces = spaces if isinstance(spaces, SpaceSet) else SpaceSet(spaces)
    activations = spaces.differentiable_activations(traits)
    columns = []
    for j, space in enumerate(spaces):
        a = activations[:, j]
        if space.probe is not None:
            columns.append(space.probe.slope * a + space.probe.intercept)
            continue
        ref = space.reference
        if ref is None:
            raise SpaceError(f"space {space.key} has no reference distribution, so it has no P_s")
        p = ref.link(a).clamp(P_CLIP, 1 - P_CLIP)
        columns.append(torch.log(p) - torch.log1p(-p))
    return torch.stack(columns, dim=1)


def adaptive_loss(
    logits: torch.Tensor,
    traits: torch.Tensor,
    labels: torch.Tensor,
    spaces: SpaceSet,
    class_names: Sequence[str],
    weight: float = 1.0,
    confidence: float = ADAPTIVE_CONFIDENCE,
) -> torch.Tensor:
    """Per-image loss of the adaptive attacker (to be maximised): the cross-entropy of the label,
    capped at ``−log(1 − confidence)`` (once the image is misclassified with that confidence, the
    attacker stops raising it, so the classifier is not more confident than a clean image would
    be), plus ``weight`` × the semantic margin of the class it is pushed to (the runner-up to the
    label) over the label: it raises that class's semantic probabilities and lowers the label's.
    Both terms aim at the ``gap`` score; the second also mimics semantic support."""
    t = _attacker_terms(logits, traits, labels, spaces, class_names, confidence)
    mean_ell = space_logits(spaces, traits) @ t.class_weights.T  # B × K
    semantic = mean_ell[t.rows, t.rival] - mean_ell[t.rows, labels]
    return t.capped + weight * semantic


@dataclass
class _AttackerTerms:
    ce: torch.Tensor  # the label's cross-entropy per image
    capped: torch.Tensor  # ... capped at −log(1 − confidence)
    rival: torch.Tensor  # the class each image is pushed to: the runner-up to its label
    rows: torch.Tensor
    class_weights: torch.Tensor  # K × S: the mean over each class's spaces


def _attacker_terms(
    logits: torch.Tensor,
    traits: torch.Tensor,
    labels: torch.Tensor,
    spaces: SpaceSet,
    class_names: Sequence[str],
    confidence: float,
) -> _AttackerTerms:
    """What the adaptive and the score-aware attacker share."""
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    masked = logits.detach().clone()
    masked[torch.arange(len(labels)), labels] = -torch.inf
    masks = torch.as_tensor(_class_masks(spaces, class_names), device=traits.device)  # K × S
    return _AttackerTerms(
        ce,
        torch.clamp(ce, max=-math.log(1 - confidence)),
        masked.argmax(1),
        torch.arange(len(labels), device=traits.device),
        masks.float() / masks.sum(1, keepdim=True).clamp(min=1),
    )


def score_aware_loss(
    logits: torch.Tensor,
    traits: torch.Tensor,
    labels: torch.Tensor,
    spaces: SpaceSet,
    class_names: Sequence[str],
    detector: Detector,
    weight: float = 1.0,
    confidence: float = ADAPTIVE_CONFIDENCE,
) -> torch.Tensor:
    """Per-image loss of the score-aware attacker (to be maximised), who knows the stored
    ``gap`` detector (β and c): the label's cross-entropy capped at ``−log(1 − confidence)``, minus
    ``weight`` × the detector's score of the class it pushes to (the runner-up to the label),
    ``(z_rival − z_label) − (β·ΔP + c)`` with ΔP that class's mean P_s minus the label's. Once
    misclassified with that confidence, it lowers the score: less confidence, more semantic
    support."""
    if detector.score != "gap":
        raise ValueError(f"the score-aware attack aims at the gap score, not {detector.score!r}")
    t = _attacker_terms(logits, traits, labels, spaces, class_names, confidence)
    margin = logits[t.rows, t.rival] - logits[t.rows, labels]
    mean_p = torch.sigmoid(space_logits(spaces, traits)) @ t.class_weights.T  # B × K
    delta_p = mean_p[t.rows, t.rival] - mean_p[t.rows, labels]
    score = margin - (detector.beta * delta_p + detector.intercept)
    # the score term only where the wrong class already has the capped confidence: before, it would
    # pull the image back to its label; after, the cross-entropy pushes back whenever it goes below
    fooled = (t.ce.detach() >= -math.log(1 - confidence)).float()
    return t.capped - weight * fooled * score


def detector_folder(sources: Sequence[str | Path] | None, model_name: str) -> Path | None:
    """The folder whose ``detector.json`` goes with these ``--spaces`` sources: the bundled spaces'
    folder when none are given, the one folder when exactly one local folder is given, else None
    (single files, several sources and hub sources carry no detector)."""
    from ..explain.trust import default_spaces_dir

    sources = [str(s) for s in (sources or [])]
    if not sources:
        return default_spaces_dir(model_name)
    if len(sources) == 1 and not sources[0].startswith("hf://") and Path(sources[0]).is_dir():
        return Path(sources[0])
    return None
