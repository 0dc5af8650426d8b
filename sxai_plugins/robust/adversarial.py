"""Adversarial examples (PGD through Captum) and their detection by semantic probabilities.

The paper (Supplementary S.5) attacks with PGD and flags an image when **one semantic
probability is above 0.99, or more than one is above 0.9**: adversarial images push the spaces'
activations beyond the right end of the natural distribution. Rules are data
(:class:`DetectionRule`), so other thresholds can be tried on the same attacked images.

Attack: ``captum.robust.PGD`` on ``model.logits`` with the cross-entropy loss (Captum's default
``-log(output)`` expects probabilities) and every non-zero gradient's sign used (Captum skips
gradients below 1e-6 by default), L∞, untargeted (maximising the cross-entropy of the label: the
true class when known, else the clean prediction), images in [0, 1] (the model
normalises inside, so ε is in pixel units of [0, 1]), no random start, ``steps`` signed-gradient
steps of ``step_size`` (default ``2.5·ε/steps``, Madry et al.'s choice, so the iterate can reach
the ball's border and move along it), each projected back onto the ε-ball and into [0, 1].

Adaptive attack (``pgd_attack(..., spaces=...)``): the standard objection to a detector is an
attacker who knows it. This one maximises :func:`sxai_plugins.robust.detection.adaptive_loss`: the
label's cross-entropy capped once the wrong class has confidence 0.9 (so the classifier is no
more confident than on a clean image), plus the semantic margin of the class it pushes to (its
spaces' P_s up, the label's down): it aims at the ``gap`` score on both of its parts.

Evaluation (:func:`evaluate_detection` = :func:`collect_attacks` + :func:`summarise`), per attack
and ε, over the images the model classifies correctly when clean (the others need no attack):

- attack success rate: share of them misclassified after the attack;
- ROC AUC of the detection score (:mod:`sxai_plugins.robust.detection`) between every clean image and the
  successful adversarial ones, also for its confidence part and its semantic part alone;
- detection rate at the calibrated threshold (of the successful adversarial images) and the
  false-positive rate (of the clean images, which must not be the calibration images);
- per rule: the same two rates.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils.errors import SxaiError
from .._utils.io import atomic_write
from .._utils.torch import frozen
from ..models.inference import iter_outputs
from ..models.trait_model import TraitModel
from ..spaces.space import SpaceSet
from .detection import (
    ADAPTIVE_CONFIDENCE,
    PAPER_MULTI,
    PAPER_SINGLE,
    Detector,
    adaptive_loss,
    score_aware_loss,
    score_parts,
    spaces_digest,
)

__all__ = [
    "PAPER_RULE",
    "DetectionRule",
    "ATTACKS",
    "AdversarialReport",
    "AttackData",
    "EpsilonResult",
    "RuleResult",
    "collect_attacks",
    "evaluate_detection",
    "heldout_files",
    "pgd_attack",
    "summarise",
]


@dataclass(frozen=True)
class DetectionRule:
    """Flag an image when one probability is above ``single``, or at least ``count`` are above
    ``multi`` (strictly above, as the paper words it). ``scope``: ``"all"`` spaces, or only the
    spaces of the class the model predicts for the image being judged (``"predicted"``)."""

    name: str = "paper"
    single: float = PAPER_SINGLE
    multi: float = PAPER_MULTI
    count: int = 2
    scope: str = "all"

    def __post_init__(self) -> None:
        if self.scope not in ("all", "predicted"):
            raise ValueError(
                f"rule {self.name}: scope must be 'all' or 'predicted', not {self.scope!r}"
            )
        if self.count < 1:
            raise ValueError(f"rule {self.name}: count must be at least 1, got {self.count}")

    @classmethod
    def parse(cls, text: str, name: str = "custom") -> DetectionRule:
        """``"single=0.95,multi=0.8,count=2,scope=predicted"`` (omitted keys keep the paper's)."""
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in ("name", "single", "multi", "count", "scope"):
                raise SxaiError(
                    f"detection rule {text!r}: expected key=value pairs with keys name, "
                    "single, multi, count, scope"
                )
            try:
                values[key] = (
                    float(value)
                    if key in ("single", "multi")
                    else int(value)
                    if key == "count"
                    else value.strip()
                )
            except ValueError as exc:
                raise SxaiError(
                    f"detection rule {text!r}: {key} needs a number, got {value!r}"
                ) from exc
        try:
            return cls(**{"name": name, **values})
        except ValueError as exc:
            raise SxaiError(f"detection rule {text!r}: {exc}") from exc

    def flags(
        self,
        probabilities: torch.Tensor,
        space_classes: Sequence[str] | None = None,
        predicted: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``B`` bools from ``B×S`` semantic probabilities.

        ``space_classes`` (one class per space) and ``predicted`` (one per image) are needed for
        ``scope="predicted"``.
        """
        p = torch.as_tensor(probabilities)
        if not p.is_floating_point():
            p = p.double()
        if p.ndim == 1:
            p = p[None]
        # thresholds in the probabilities' own precision: a float32 P of exactly 0.99 is then
        # not "above 0.99" merely because float32(0.99) > 0.99 in float64
        single, multi = (torch.tensor(t, dtype=p.dtype) for t in (self.single, self.multi))
        if self.scope == "predicted":
            if space_classes is None or predicted is None:
                raise ValueError(
                    f"rule {self.name}: scope 'predicted' needs space_classes and predicted"
                )
            keep = torch.tensor([[c == pred for c in space_classes] for pred in predicted])
            p = torch.where(keep, p, torch.zeros_like(p))
        return (p > single).any(dim=1) | ((p > multi).sum(dim=1) >= self.count)


PAPER_RULE = DetectionRule()
EPSILONS = (0.05, 0.01, 0.005)  # the default L∞ radii, in pixel units of [0, 1]
PGD_STEPS = 10
STEP_SIZE_FACTOR = (
    2.5  # step size = factor · ε / steps (Madry et al.: the iterate can reach the border)
)


def pgd_attack(
    model: TraitModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = PGD_STEPS,
    step_size: float | None = None,
    random_start: bool = False,
    *,
    spaces: SpaceSet | None = None,
    adaptive_weight: float = 1.0,
    adaptive_confidence: float = ADAPTIVE_CONFIDENCE,
    detector: Detector | None = None,
) -> torch.Tensor:
    """Untargeted L∞ PGD (``captum.robust.PGD``) against ``labels``; images in [0, 1].

    With ``spaces``, the attack is **adaptive**: it maximises
    :func:`sxai_plugins.robust.detection.adaptive_loss` (the label's cross-entropy capped at
    ``adaptive_confidence``, plus ``adaptive_weight`` × the semantic margin of the class it pushes
    to) instead of the plain cross-entropy; with ``spaces`` and a ``gap`` ``detector`` it is
    **score-aware**: it maximises :func:`sxai_plugins.robust.detection.score_aware_loss` (the capped
    cross-entropy minus the detector's score). Returns images within ``eps`` of the input (L∞)
    and inside [0, 1].
    """
    from captum.robust import PGD

    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    step_size = STEP_SIZE_FACTOR * eps / steps if step_size is None else step_size
    if spaces is None:
        forward, loss = model.logits, nn.CrossEntropyLoss(reduction="none")
    else:
        if not 0 < adaptive_confidence < 1:
            raise ValueError(f"adaptive_confidence must be in (0, 1), got {adaptive_confidence}")
        k = model.num_classes

        def forward(x: torch.Tensor) -> torch.Tensor:
            with spaces.pooling(model):
                out = model(x)  # one pass gives both: logits and what the spaces read
            return torch.cat([out.logits, out.features(spaces.layer_names)], dim=1)

        def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if detector is not None:
                return score_aware_loss(
                    output[:, :k],
                    output[:, k:],
                    target,
                    spaces,
                    model.class_names,
                    detector,
                    adaptive_weight,
                    adaptive_confidence,
                )
            return adaptive_loss(
                output[:, :k],
                output[:, k:],
                target,
                spaces,
                model.class_names,
                adaptive_weight,
                adaptive_confidence,
            )

    with frozen(
        model, eval_mode=False
    ):  # input gradients only: autograd skips the weight-gradient kernels
        # Captum's default loss is -log(output), meant for probabilities: on logits it is wrong,
        # so the cross-entropy of the logits is given explicitly
        attack = PGD(forward, loss_func=loss, lower_bound=0.0, upper_bound=1.0)
        # Captum leaves pixels whose gradient is below 1e-6 unperturbed; PGD takes the sign of
        # every non-zero gradient (confident images have tiny but useful gradients)
        attack.fgsm.zero_thresh = 0.0
        with warnings.catch_warnings():
            # Captum detaches the iterate after each step, then warns when it re-enables its grad
            warnings.filterwarnings(
                "ignore", message="Input Tensor 0 did not already require gradients"
            )
            adv = attack.perturb(
                images.detach(),
                radius=eps,
                step_size=step_size,
                step_num=steps,
                target=labels,
                targeted=False,
                random_start=random_start,
                norm="Linf",
            )
    # Captum projects, then clamps; re-projecting guards against float rounding at the border
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0).detach()


# -------------------------------------------------------------------------------- evaluation
ATTACKS = ("pgd", "adaptive", "score-aware")


@dataclass
class RuleResult:
    rule: str
    detected: int  # successful adversarial images flagged
    detection_rate: float
    false_positives: int  # clean images flagged
    false_positive_rate: float


@dataclass
class EpsilonResult:
    eps: float
    n_attacked: int  # clean images classified correctly (the ones attacked)
    n_success: int
    attack_success_rate: float
    rules: list[RuleResult]
    mean_max_p_clean: float  # mean of the largest P_s: how far the attack pushes the spaces
    mean_max_p_adversarial: float
    attack: str = "pgd"  # "pgd" or "adaptive"
    n_clean: int = 0  # clean images the false-positive rates are measured on
    score: str = ""  # the detection score the AUC and the detector columns use
    auc: float = float("nan")  # ROC AUC of the score: clean images vs successful adversarial ones
    auc_margin: float = float("nan")  # the same for the logit margin alone (confidence only)
    auc_semantic: float = float("nan")  # ... and for the semantic margin alone (semantics only)
    detected: int = 0  # successful adversarial images above the calibrated threshold
    detection_rate: float = float("nan")
    false_positives: int = 0  # clean images above it
    false_positive_rate: float = float("nan")
    roc: dict[str, list[float]] = field(default_factory=dict)  # {"fpr": [...], "tpr": [...]}


@dataclass
class AdversarialReport:
    n_images: int  # readable images
    n_correct: int
    labels: str  # "folders" (true classes) or "predictions"
    steps: int
    step_size_factor: float  # step size = factor · ε / steps
    rules: list[DetectionRule]
    results: list[EpsilonResult]
    skipped: list[str] = field(default_factory=list)
    detector: dict[str, Any] | None = None  # the calibrated detector used (Detector.to_dict())
    adaptive_weight: float = 1.0
    adaptive_confidence: float = ADAPTIVE_CONFIDENCE

    def to_dict(self, roc: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not roc:
            for r in data["results"]:
                r.pop("roc")
        return data

    def table(self) -> str:
        """A Markdown table: one row per (attack, ε), the calibrated detector then each rule."""
        det = self.detector
        head = (
            f"{self.n_images} images ({self.n_correct} classified correctly and attacked; labels from "
            f"{self.labels}); PGD L∞, {self.steps} steps of {self.step_size_factor:g}·ε/{self.steps}"
        )
        if det:
            promise = (
                f"with confidence {det['confidence']:g}" if det.get("confidence") else "on average"
            )
            head += (
                f"; detector: score {det['score']}, threshold {det['threshold']:.4g} calibrated to "
                f"FPR ≤ {det['fpr']:g} ({promise}) on {det['n_calibration']} other clean images"
            )
        rule_cols = "".join(f" {r.name} rule: detection | {r.name} rule: FPR |" for r in self.rules)
        lines = [
            head,
            "",
            "| attack | ε | attack success | ROC AUC (margin / semantic alone) "
            "| detection at threshold | FPR (clean) |" + rule_cols,
            "|---" * (6 + 2 * len(self.rules)) + "|",
        ]
        for r in self.results:
            rules = "".join(
                f" {_rate(x.detection_rate, x.detected, r.n_success)} "
                f"| {_rate(x.false_positive_rate, x.false_positives, r.n_clean)} |"
                for x in r.rules
            )
            lines.append(
                f"| {r.attack} | {r.eps:g} | {_rate(r.attack_success_rate, r.n_success, r.n_attacked)} "
                f"| {_number(r.auc)} ({_number(r.auc_margin)} / {_number(r.auc_semantic)}) "
                f"| {_rate(r.detection_rate, r.detected, r.n_success) if det else '–'} "
                f"| {_rate(r.false_positive_rate, r.false_positives, r.n_clean) if det else '–'} |"
                + rules
            )
        return "\n".join(lines)


def _rate(rate: float, k: int, n: int) -> str:
    """``12.5% (1/8)``; a rate over nothing (0/0) has no value: ``n/a (0/0)``."""
    return f"{rate:.1%} ({k}/{n})" if n and math.isfinite(rate) else f"n/a ({k}/{n})"


def _number(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def heldout_files(card: str | Path, data_root: str | Path | None = None) -> list[Path]:
    """The held-out images a head card (``head.json`` from ``sxai train-head``) lists.

    Paths in the card are relative to its ``data`` folder; ``data_root`` overrides that folder
    (the card's own is tried as written, then relative to the card's folder and its parents).
    """
    card = Path(card)
    try:
        info = json.loads(card.read_text())
    except FileNotFoundError as exc:
        raise SxaiError(f"{card}: no such head card") from exc
    except json.JSONDecodeError as exc:
        raise SxaiError(f"{card}: not a JSON head card ({exc})") from exc
    files = info.get("heldout")
    if not files:
        raise SxaiError(f"{card}: the card lists no held-out files (no 'heldout' key)")
    if data_root is None:
        written = Path(info.get("data", ""))
        candidates = [written] + [base / written for base in [card.parent, *card.parent.parents]]
        data_root = next((c for c in candidates if (c / files[0]).is_file()), None)
        if data_root is None:
            raise SxaiError(
                f"{card}: its data folder {str(written)!r} was not found (looked as written "
                "and beside the card's folders); pass --data-root"
            )
    return [Path(data_root) / f for f in files]


def _labels_for(paths: Sequence[Path], class_names: Sequence[str]) -> list[int] | None:
    """Class indices from each file's parent folder, or None when those are not class names."""
    labels = []
    for path in paths:
        if path.parent.name not in class_names:
            return None
        labels.append(list(class_names).index(path.parent.name))
    return labels


@dataclass
class AttackData:
    """Clean and attacked outputs of a set of images (what the detection figures are made of)."""

    paths: list[str]
    labels: np.ndarray  # N class indices (truth, or the clean prediction)
    clean_logits: np.ndarray  # N × K
    clean_traits: np.ndarray  # N × F: what the spaces read (the traits, then pooled layer outputs)
    # (attack, ε) -> (indices into the N images that were attacked, their logits, their "traits")
    adversarial: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, np.ndarray]]
    labels_from: str = "folders"
    skipped: list[str] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return self.clean_logits.argmax(1) == self.labels


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return h.hexdigest()[:16]


def _cache_name(
    paths: list[str],
    weights: str,
    attack: str,
    eps: float,
    steps: int,
    step_size_factor: float,
    adaptive: tuple[float, float, str],
    detector: Detector | None,
) -> str:
    """The cache file of one batch's attacked outputs, named by everything they depend on: the
    adaptive attacks also on their settings and the spaces (``adaptive``), the score-aware one on
    the detector's fit."""
    key = _digest(
        paths,
        weights,
        attack,
        eps,
        steps,
        step_size_factor,
        *(adaptive if attack != "pgd" else ()),
        *((detector.beta, detector.intercept) if attack == "score-aware" and detector else ()),
    )
    return f"{attack}-eps{eps:g}-steps{steps}-{key}.npz"


def collect_attacks(
    model: TraitModel,
    spaces: SpaceSet,
    paths: Sequence[str | Path],
    *,
    eps: Iterable[float] = EPSILONS,
    attacks: Sequence[str] = ("pgd",),
    steps: int = PGD_STEPS,
    step_size_factor: float = STEP_SIZE_FACTOR,
    labels: Sequence[int] | None = None,
    adaptive_weight: float = 1.0,
    adaptive_confidence: float = ADAPTIVE_CONFIDENCE,
    batch_size: int = 16,
    progress: bool = True,
    cache: str | Path | None = None,
    detector: Detector | None = None,
) -> AttackData:
    """Attack every correctly classified image with each attack at each ε; keep logits and traits.

    ``labels`` (class indices, one per path) default to the images' parent folders when these are
    all class names of the model, else to the clean predictions (then every image counts as
    correct). Unreadable images are reported in ``skipped`` and left out. With ``cache`` (a
    folder), each batch's attacked outputs are stored there under a key of everything they depend
    on (images, model weights, attack settings, and the spaces for the adaptive attack), so an
    interrupted run resumes and a run with other spaces reuses the plain attacks.
    """
    from tqdm.auto import tqdm

    eps = [float(e) for e in eps]
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise SxaiError(f"unknown attack(s) {unknown}; choose from {', '.join(ATTACKS)}")
    if "score-aware" in attacks and (detector is None or detector.score != "gap"):
        raise SxaiError("the score-aware attack needs a calibrated detector with the gap score")
    paths = [Path(p) for p in paths]
    if labels is None:
        labels = _labels_for(paths, model.class_names)
    source = "predictions" if labels is None else "folders"
    label_of = None if labels is None else {p: int(y) for p, y in zip(paths, labels)}
    device = next(model.parameters()).device
    cache = Path(cache) if cache is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        weights = _digest(
            model.fingerprint(),
            *(t.detach().cpu().numpy() for t in model.head.state_dict().values()),
            # the stored "traits" are the spaces' features: the layers they read are part of them
            *((spaces.layer_names,) if spaces.layer_names else ()),
        )
        # what the adaptive attacks depend on besides: every space's weights and link to P_s
        space_key = spaces_digest(spaces) if set(attacks) - {"pgd"} else ""
    failures: list[tuple[Path, str]] = []
    kept: list[str] = []
    truths, clean_logits, clean_traits = [], [], []
    adv: dict[tuple[str, float], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {
        (a, e): [] for a in attacks for e in eps
    }
    offset = 0
    total = len(paths) * len(eps) * len(attacks)
    with (
        tqdm(total=total, desc="attacking", unit="attack", disable=not progress) as bar,
        spaces.pooling(model),
    ):
        for batch in iter_outputs(model, paths, batch_size, failures, keep_images=True):
            images, clean = batch.images, batch.output
            pred = clean.logits.argmax(1).cpu()
            truth = pred if label_of is None else torch.tensor([label_of[p] for p in batch.paths])
            keep = (pred == truth).nonzero().flatten()
            kept += [str(p) for p in batch.paths]
            truths.append(truth.numpy())
            clean_logits.append(clean.logits.float().cpu().numpy())
            clean_traits.append(clean.features(spaces.layer_names).float().cpu().numpy())
            bar.update((len(batch.paths) - len(keep)) * len(eps) * len(attacks))
            for attack in attacks:
                for e in eps:
                    if not len(keep):
                        continue
                    file = (
                        None
                        if cache is None
                        else cache
                        / _cache_name(
                            [str(p) for p in batch.paths],
                            weights,
                            attack,
                            e,
                            steps,
                            step_size_factor,
                            (adaptive_weight, adaptive_confidence, space_key),
                            detector,
                        )
                    )
                    if file is not None and file.is_file():
                        with np.load(file) as stored:
                            logits, traits = stored["logits"], stored["traits"]
                    else:
                        x = pgd_attack(
                            model,
                            images[keep.to(device)],
                            truth[keep].to(device),
                            e,
                            steps,
                            step_size_factor * e / steps,
                            spaces=spaces if attack != "pgd" else None,
                            adaptive_weight=adaptive_weight,
                            adaptive_confidence=adaptive_confidence,
                            detector=detector if attack == "score-aware" else None,
                        )
                        with torch.no_grad(), spaces.pooling(model):
                            out = model(x)
                        logits, traits = (
                            out.logits.float().cpu().numpy(),
                            out.features(spaces.layer_names).float().cpu().numpy(),
                        )
                        if file is not None:
                            _save_npz(file, logits=logits, traits=traits)
                    adv[(attack, e)].append((keep.numpy() + offset, logits, traits))
                    bar.update(len(keep))
            offset += len(batch.paths)

    def stack(chunks: list[np.ndarray], width: int) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.float32)

    k, c = model.num_classes, spaces.feature_dim
    return AttackData(
        paths=kept,
        labels=np.concatenate(truths) if truths else np.zeros(0, dtype=np.int64),
        clean_logits=stack(clean_logits, k),
        clean_traits=stack(clean_traits, c),
        adversarial={
            key: (
                np.concatenate([i for i, _, _ in v]) if v else np.zeros(0, dtype=np.int64),
                stack([lg for _, lg, _ in v], k),
                stack([t for _, _, t in v], c),
            )
            for key, v in adv.items()
        },
        labels_from=source,
        skipped=[why for _p, why in failures],
    )


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a path
            np.savez(f, **arrays)

    return atomic_write(path, write)


def _auc(clean: np.ndarray, attacked: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if not len(clean) or not len(attacked):
        return float("nan")
    return float(
        roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(attacked))], np.r_[clean, attacked])
    )


def _check_rule_names(rules: Sequence[DetectionRule]) -> None:
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise SxaiError(f"detection rules need distinct names, got {names}")


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def _rule_result(
    name: str, hits: np.ndarray, n_success: int, clean_flags: np.ndarray
) -> RuleResult:
    """A rule's rates: ``hits`` flags the successful adversarial images, ``clean_flags`` clean ones."""
    detected, false_pos = int(hits.sum()), int(clean_flags.sum())
    return RuleResult(
        name, detected, _ratio(detected, n_success), false_pos, _ratio(false_pos, len(clean_flags))
    )


def _roc_points(clean: np.ndarray, attacked: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve of clean vs attacked scores (5 decimals), empty when either side is."""
    from sklearn.metrics import roc_curve

    if not len(clean) or not len(attacked):
        return {}
    fpr, tpr, _ = roc_curve(
        np.r_[np.zeros(len(clean)), np.ones(len(attacked))], np.r_[clean, attacked]
    )
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def summarise(
    data: AttackData,
    spaces: SpaceSet,
    class_names: Sequence[str],
    *,
    detector: Detector | None = None,
    rules: Sequence[DetectionRule] = (PAPER_RULE,),
    steps: int = PGD_STEPS,
    step_size_factor: float = STEP_SIZE_FACTOR,
    adaptive_weight: float = 1.0,
    adaptive_confidence: float = ADAPTIVE_CONFIDENCE,
) -> AdversarialReport:
    """Per (attack, ε): attack success; ROC AUC of the detection score (every clean image vs the
    successful adversarial ones), also for its confidence and semantic parts alone; detection and
    false-positive rates at the detector's calibrated threshold; and each rule's rates. Without a
    detector the AUC is the paper's rule as a score's, and the detector columns stay empty."""
    _check_rule_names(rules)
    space_classes = [s.class_name for s in spaces]
    scorer = detector or Detector(score="paper")

    def judge(logits: np.ndarray, traits: np.ndarray):
        p = spaces.probabilities(torch.from_numpy(traits))
        parts = score_parts(logits, p, spaces, class_names)
        predicted = [class_names[i] for i in logits.argmax(1)] if len(logits) else []
        flags = {r.name: r.flags(p, space_classes, predicted).numpy() for r in rules}
        return p, parts, scorer.scores_from_parts(parts), flags

    p_clean, parts_clean, s_clean, flags_clean = judge(data.clean_logits, data.clean_traits)
    correct = data.correct
    n_clean, n_correct = len(data.labels), int(correct.sum())
    results = []
    for (attack, e), (index, logits, traits) in data.adversarial.items():
        fooled = logits.argmax(1) != data.labels[index] if len(index) else np.zeros(0, dtype=bool)
        p_adv, parts_adv, s_adv, flags_adv = judge(logits, traits)
        n_success = int(fooled.sum())
        s_hit = s_adv[fooled]
        detected = int((s_hit > detector.threshold).sum()) if detector else 0
        false_pos = int((s_clean > detector.threshold).sum()) if detector else 0
        results.append(
            EpsilonResult(
                eps=e,
                n_attacked=n_correct,
                n_success=n_success,
                attack_success_rate=_ratio(n_success, n_correct),
                rules=[
                    _rule_result(r.name, flags_adv[r.name] & fooled, n_success, flags_clean[r.name])
                    for r in rules
                ],
                mean_max_p_clean=float(p_clean[torch.from_numpy(correct)].max(1).values.mean())
                if n_correct
                else float("nan"),
                mean_max_p_adversarial=float(p_adv.max(1).values.mean())
                if len(p_adv)
                else float("nan"),
                attack=attack,
                n_clean=n_clean,
                score=scorer.score,
                auc=_auc(s_clean, s_hit),
                auc_margin=_auc(parts_clean["margin"], parts_adv["margin"][fooled]),
                auc_semantic=_auc(parts_clean["semantic"], parts_adv["semantic"][fooled]),
                detected=detected,
                detection_rate=_ratio(detected, n_success) if detector else float("nan"),
                false_positives=false_pos,
                false_positive_rate=_ratio(false_pos, n_clean) if detector else float("nan"),
                roc=_roc_points(s_clean, s_hit),
            )
        )
    return AdversarialReport(
        n_clean,
        n_correct,
        data.labels_from,
        steps,
        step_size_factor,
        list(rules),
        results,
        data.skipped,
        detector.to_dict() if detector else None,
        adaptive_weight,
        adaptive_confidence,
    )


def evaluate_detection(
    model: TraitModel,
    spaces: SpaceSet,
    paths: Sequence[str | Path],
    *,
    eps: Iterable[float] = EPSILONS,
    rules: Sequence[DetectionRule] = (PAPER_RULE,),
    steps: int = PGD_STEPS,
    step_size_factor: float = STEP_SIZE_FACTOR,
    labels: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    detector: Detector | None = None,
    attacks: Sequence[str] = ("pgd",),
    adaptive_weight: float = 1.0,
    adaptive_confidence: float = ADAPTIVE_CONFIDENCE,
    cache: str | Path | None = None,
) -> AdversarialReport:
    """:func:`collect_attacks` then :func:`summarise` (see both). False-positive rates are
    measured on these images' clean versions, so ``detector`` must have been calibrated on others."""
    _check_rule_names(rules)  # before the costly attacks
    data = collect_attacks(
        model,
        spaces,
        paths,
        eps=eps,
        attacks=attacks,
        steps=steps,
        step_size_factor=step_size_factor,
        labels=labels,
        adaptive_weight=adaptive_weight,
        adaptive_confidence=adaptive_confidence,
        batch_size=batch_size,
        progress=progress,
        cache=cache,
        detector=detector,
    )
    return summarise(
        data,
        spaces,
        model.class_names,
        detector=detector,
        rules=rules,
        steps=steps,
        step_size_factor=step_size_factor,
        adaptive_weight=adaptive_weight,
        adaptive_confidence=adaptive_confidence,
    )
