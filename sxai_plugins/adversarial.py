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

Evaluation (:func:`evaluate_detection`), per ε, over the images the model classifies correctly
when clean (the others need no attack):

- attack success rate: share of them misclassified after the attack;
- detection rate: share of the successful adversarial images a rule flags;
- false-positive rate: share of the same clean images the rule flags.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SxaiError
from .images import iter_batches
from .inference import model_size
from .model import TraitModel
from .spaces import SpaceSet

__all__ = [
    "PAPER_RULE",
    "DetectionRule",
    "EpsilonResult",
    "RuleResult",
    "evaluate_detection",
    "heldout_files",
    "pgd_attack",
]


@dataclass(frozen=True)
class DetectionRule:
    """Flag an image when one probability is above ``single``, or at least ``count`` are above
    ``multi`` (strictly above, as the paper words it). ``scope``: ``"all"`` spaces, or only the
    spaces of the class the model predicts for the image being judged (``"predicted"``)."""

    name: str = "paper"
    single: float = 0.99
    multi: float = 0.9
    count: int = 2
    scope: str = "all"

    def __post_init__(self) -> None:
        if self.scope not in ("all", "predicted"):
            raise ValueError(f"rule {self.name}: scope must be 'all' or 'predicted', not {self.scope!r}")
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
                raise SxaiError(f"detection rule {text!r}: expected key=value pairs with keys name, "
                                "single, multi, count, scope")
            try:
                values[key] = (float(value) if key in ("single", "multi")
                               else int(value) if key == "count" else value.strip())
            except ValueError as exc:
                raise SxaiError(f"detection rule {text!r}: {key} needs a number, got {value!r}") from exc
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
                raise ValueError(f"rule {self.name}: scope 'predicted' needs space_classes and predicted")
            keep = torch.tensor([[c == pred for c in space_classes] for pred in predicted])
            p = torch.where(keep, p, torch.zeros_like(p))
        return (p > single).any(dim=1) | ((p > multi).sum(dim=1) >= self.count)


PAPER_RULE = DetectionRule()


def pgd_attack(
    model: TraitModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = False,
) -> torch.Tensor:
    """Untargeted L∞ PGD (``captum.robust.PGD``) against ``labels``; images in [0, 1].

    Returns images within ``eps`` of the input (L∞) and inside [0, 1].
    """
    from captum.robust import PGD

    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:  # input gradients only: autograd then skips the weight-gradient kernels
        p.requires_grad_(False)
    try:
        # Captum's default loss is -log(output), meant for probabilities: on logits it is wrong,
        # so the cross-entropy of the logits is given explicitly
        attack = PGD(model.logits, loss_func=nn.CrossEntropyLoss(reduction="none"),
                     lower_bound=0.0, upper_bound=1.0)
        # Captum leaves pixels whose gradient is below 1e-6 unperturbed; PGD takes the sign of
        # every non-zero gradient (confident images have tiny but useful gradients)
        attack.fgsm.zero_thresh = 0.0
        with warnings.catch_warnings():
            # Captum detaches the iterate after each step, then warns when it re-enables its grad
            warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
            adv = attack.perturb(images.detach(), radius=eps, step_size=step_size, step_num=steps,
                                 target=labels, targeted=False, random_start=random_start, norm="Linf")
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    # Captum projects, then clamps; re-projecting guards against float rounding at the border
    return torch.min(torch.max(adv, images - eps), images + eps).clamp(0.0, 1.0).detach()


# -------------------------------------------------------------------------------- evaluation
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table: one row per (ε, rule)."""
        lines = [
            f"{self.n_images} images ({self.n_correct} classified correctly and attacked; labels from "
            f"{self.labels}); PGD L∞, {self.steps} steps of {self.step_size_factor:g}·ε/{self.steps}",
            "",
            "| ε | rule | attack success | detection (of successful) | false positives (clean) "
            "| mean max P clean → adv |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.results:
            for rule in r.rules:
                lines.append(
                    f"| {r.eps:g} | {rule.rule} | {_rate(r.attack_success_rate, r.n_success, r.n_attacked)} "
                    f"| {_rate(rule.detection_rate, rule.detected, r.n_success)} "
                    f"| {_rate(rule.false_positive_rate, rule.false_positives, r.n_attacked)} "
                    f"| {_number(r.mean_max_p_clean)} → {_number(r.mean_max_p_adversarial)} |")
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
            raise SxaiError(f"{card}: its data folder {str(written)!r} was not found (looked as written "
                            "and beside the card's folders); pass --data-root")
    return [Path(data_root) / f for f in files]


def _labels_for(paths: Sequence[Path], class_names: Sequence[str]) -> list[int] | None:
    """Class indices from each file's parent folder, or None when those are not class names."""
    labels = []
    for path in paths:
        if path.parent.name not in class_names:
            return None
        labels.append(list(class_names).index(path.parent.name))
    return labels


def evaluate_detection(
    model: TraitModel,
    spaces: SpaceSet,
    paths: Sequence[str | Path],
    *,
    eps: Iterable[float] = (0.05, 0.01, 0.005),
    rules: Sequence[DetectionRule] = (PAPER_RULE,),
    steps: int = 10,
    step_size_factor: float = 2.5,
    labels: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> AdversarialReport:
    """Attack every correctly classified image at each ε and score the detection rules.

    ``labels`` (class indices, one per path) default to the images' parent folders when these are
    all class names of the model, else to the clean predictions (then every image counts as
    correct). Unreadable images are reported in ``skipped`` and left out.
    """
    from tqdm.auto import tqdm

    eps = [float(e) for e in eps]
    names_seen = [r.name for r in rules]
    if len(set(names_seen)) != len(names_seen):
        raise SxaiError(f"detection rules need distinct names, got {names_seen}")
    paths = [Path(p) for p in paths]
    if labels is None:
        labels = _labels_for(paths, model.class_names)
    source = "predictions" if labels is None else "folders"
    label_of = None if labels is None else {p: int(y) for p, y in zip(paths, labels)}
    space_classes = [s.class_name for s in spaces]
    device = next(model.parameters()).device
    failures: list[tuple[Path, str]] = []
    n_images = n_correct = 0
    success = {e: 0 for e in eps}
    detected = {(e, r.name): 0 for e in eps for r in rules}
    false_pos = {r.name: 0 for r in rules}
    max_p_clean: list[torch.Tensor] = []
    max_p_adv: dict[float, list[torch.Tensor]] = {e: [] for e in eps}
    with tqdm(total=len(paths) * len(eps), desc="attacking", unit="attack", disable=not progress) as bar:
        for batch in iter_batches(paths, model_size(model), batch_size, failures):
            images = batch.images.to(device)
            with torch.no_grad():
                clean = model(images)
            pred = clean.logits.argmax(1).cpu()
            truth = pred if label_of is None else torch.tensor([label_of[p] for p in batch.paths])
            correct = pred == truth
            n_images += len(batch.paths)
            n_correct += int(correct.sum())
            bar.update((len(batch.paths) - int(correct.sum())) * len(eps))
            if not correct.any():
                continue
            keep = correct.nonzero().flatten()
            images, truth = images[keep.to(device)], truth[keep]
            names = [model.class_names[i] for i in truth.tolist()]
            p_clean = spaces.probabilities(clean.traits[keep.to(device)])
            max_p_clean.append(p_clean.max(dim=1).values)
            for rule in rules:
                false_pos[rule.name] += int(rule.flags(p_clean, space_classes, names).sum())
            for e in eps:
                adv = pgd_attack(model, images, truth.to(device), e, steps, step_size_factor * e / steps)
                with torch.no_grad():
                    out = model(adv)
                adv_pred = out.logits.argmax(1).cpu()
                fooled = adv_pred != truth
                success[e] += int(fooled.sum())
                p_adv = spaces.probabilities(out.traits)
                max_p_adv[e].append(p_adv.max(dim=1).values)
                adv_names = [model.class_names[i] for i in adv_pred.tolist()]
                for rule in rules:
                    flagged = rule.flags(p_adv, space_classes, adv_names)
                    detected[(e, rule.name)] += int((flagged & fooled).sum())
                bar.update(len(keep))

    def rate(a: int, b: int) -> float:
        return a / b if b else float("nan")

    def mean(chunks: list[torch.Tensor]) -> float:
        return float(torch.cat(chunks).mean()) if chunks else float("nan")

    results = [
        EpsilonResult(
            eps=e, n_attacked=n_correct, n_success=success[e],
            attack_success_rate=rate(success[e], n_correct),
            rules=[RuleResult(r.name, detected[(e, r.name)], rate(detected[(e, r.name)], success[e]),
                              false_pos[r.name], rate(false_pos[r.name], n_correct)) for r in rules],
            mean_max_p_clean=mean(max_p_clean), mean_max_p_adversarial=mean(max_p_adv[e]),
        )
        for e in eps
    ]
    return AdversarialReport(n_images, n_correct, source, steps, step_size_factor, list(rules),
                             results, [why for _p, why in failures])
