"""The calibrated adversarial detector: conformal threshold, scores, adaptive loss, storage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import sxai_plugins as sx
from sxai_plugins._utils.errors import SpaceError
from sxai_plugins.models.trait_model import TraitModel
from sxai_plugins.robust.adversarial import PAPER_RULE, AttackData, pgd_attack, summarise
from sxai_plugins.robust.detection import (
    Detector,
    DetectorWarning,
    adaptive_loss,
    calibrate,
    conformal_threshold,
    load_detector,
    score_parts,
    space_logits,
)
from sxai_plugins.spaces.space import ProbeHead, SemanticSpace, SpaceSet

CLASSES = ["cat", "dog"]


# ------------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_calibrated_threshold_meets_its_fpr_on_a_synthetic_score_distribution(fpr):
    rng = np.random.default_rng(0)
    n = 1000
    fresh = np.sort(rng.standard_normal(400_000))  # the clean scores the detector meets later

    def rates(confidence):
        out = []
        for _ in range(200):
            threshold = conformal_threshold(rng.standard_normal(n), fpr, confidence)
            out.append(1 - np.searchsorted(fresh, threshold, side="right") / fresh.size)
        return np.array(out)

    # on average (split conformal): the expected false-positive rate is the budget, up to 1/(n+1)
    marginal = rates(None)
    assert fpr - 0.004 <= marginal.mean() <= fpr + 0.002
    # with confidence 0.9: the budget holds in at least 90% of calibration draws
    strict = rates(0.9)
    assert (strict <= fpr).mean() >= 0.9 - 0.05
    assert strict.mean() < marginal.mean()  # the price: a higher threshold


def test_conformal_threshold_is_the_right_order_statistic_and_refuses_too_few_images():
    scores = np.arange(1.0, 100.0)  # 99 scores: 1 … 99
    assert conformal_threshold(scores, 0.05) == 95.0  # ⌈100 · 0.95⌉ = 95th smallest
    assert conformal_threshold(scores[::-1], 0.05) == 95.0  # order of the input does not matter
    with pytest.raises(ValueError, match="at least 19 calibration images"):
        conformal_threshold(np.arange(10.0), 0.05)
    # confidence 0.9 at a 5% budget: j above it, the largest with P(Binomial(99, .05) <= j) <= 0.1: 1
    assert conformal_threshold(scores, 0.05, confidence=0.9) == 98.0
    with pytest.raises(ValueError, match="at confidence 0.9 needs at least 45"):
        conformal_threshold(np.arange(40.0), 0.05, confidence=0.9)
    with pytest.raises(ValueError, match="budget"):
        conformal_threshold(scores, 0.0)
    with pytest.raises(ValueError, match="finite"):
        conformal_threshold([1.0, float("nan")] * 20, 0.1)


def test_paper_score_is_above_zero_exactly_when_the_paper_rule_flags():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(0.8, 1.0, (500, 4)), rng.uniform(0, 1, (500, 4))])
    p[:5] = [
        [0.99, 0, 0, 0],
        [0.9901, 0, 0, 0],
        [0.9, 0.9, 0, 0],
        [0.91, 0.905, 0, 0],
        [1.0, 1.0, 1, 1],
    ]
    spaces = SpaceSet([toy_space(c, k) for c in CLASSES for k in ("a", "b")])
    logits = np.zeros((len(p), 2))
    score = score_parts(logits, p, spaces, CLASSES)["paper"]
    assert ((score > 0) == PAPER_RULE.flags(torch.tensor(p)).numpy()).all()
    assert (score[:5] > 0).tolist() == [False, True, False, True, True]


# ---------------------------------------------------------------- a model with a known semantic channel
def stripe_model() -> TraitModel:
    """Traits of a uniform image are (R, G, B, 1 − B): the classifier reads R − G only, and B is the
    'semantic' channel (cats are bluish, dogs are not), read by the spaces only."""
    body = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        body.weight.copy_(
            torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]]).view(4, 3, 1, 1)
        )
        body.bias.copy_(torch.tensor([0.0, 0, 0, 1]))
    model = TraitModel(
        body, 4, CLASSES, name="stripes", input_size=(3, 8, 8), mean=(0, 0, 0), std=(1, 1, 1)
    )
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[5.0, -5, 0, 0], [-5.0, 5, 0, 0]]))
        model.head.bias.zero_()
    return model.eval()


def stripe_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform images: a cat has R = .5 + d, G = .5 − d and B ≈ .5 + d (a dog the mirror), so a
    confident prediction comes with strong semantic evidence."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    d = 0.1 + 0.3 * torch.rand(n, generator=g)
    sign = 1 - 2 * y.float()  # +1 cat, −1 dog
    noise = 0.01 * torch.randn(n, generator=g)
    colour = torch.stack([0.5 + sign * d, 0.5 - sign * d, 0.5 + sign * d + noise], 1).clamp(0, 1)
    return colour[:, :, None, None].expand(n, 3, 8, 8).contiguous(), y


def toy_space(
    class_name: str,
    concept: str,
    channel: int = 2,
    traits: torch.Tensor | None = None,
    probe: bool = False,
) -> SemanticSpace:
    space = SemanticSpace(
        class_name,
        concept,
        "stripes",
        "x",
        4,
        torch.tensor([channel]),
        torch.tensor([1.0]),
        probe=ProbeHead(torch.eye(4)[channel] * 4, -2.0, 1.5, 0.1) if probe else None,
    )
    if not probe:
        space.with_reference(traits[:, channel] if traits is not None else torch.linspace(0, 1, 10))
    return space


def stripe_spaces(model: TraitModel, probe: bool = False) -> SpaceSet:
    reference = model.traits(stripe_images(200, seed=9)[0]).detach()
    return SpaceSet(
        [
            toy_space("cat", "stripes", 2, reference, probe),
            toy_space("dog", "stripes", 3, reference, probe),
        ]
    )


def test_gap_score_separates_an_attack_that_leaves_the_semantic_channel_untouched():
    model, torch_seed = stripe_model(), torch.manual_seed(0)  # noqa: F841 (seeded for determinism)
    spaces = stripe_spaces(model)
    calibration, _ = stripe_images(300, seed=1)
    with torch.no_grad():
        out = model(calibration)
    detector = calibrate(out.logits, spaces.probabilities(out.traits), spaces, CLASSES, fpr=0.05)
    assert detector.beta > 0  # on clean images, confidence comes with semantic evidence

    x, y = stripe_images(200, seed=2)
    adv = pgd_attack(model, x, y, eps=0.45, steps=10)
    torch.testing.assert_close(adv[:, 2], x[:, 2], rtol=0, atol=0)  # the blue channel is untouched
    with torch.no_grad():
        clean, attacked = model(x), model(adv)
    data = AttackData(
        [""] * len(y),
        y.numpy(),
        clean.logits.numpy(),
        clean.traits.numpy(),
        {("pgd", 0.45): (np.arange(len(y)), attacked.logits.numpy(), attacked.traits.numpy())},
    )
    (result,) = summarise(data, spaces, CLASSES, detector=detector).results
    assert result.attack_success_rate >= 0.9
    assert result.auc >= 0.99  # the score separates clean from attacked images
    assert result.auc_margin < 0.8  # ... which the confidence alone does not
    assert result.detection_rate >= 0.95
    assert result.false_positive_rate <= 0.1  # other clean images than the calibration ones
    assert result.roc["fpr"][0] == 0.0 and result.roc["tpr"][-1] == 1.0


# ---------------------------------------------------------------------------- adaptive attack
@pytest.mark.parametrize("probe", [False, True], ids=["v1-spaces", "v2-spaces"])
def test_adaptive_loss_gradients_reach_the_space_activations(probe):
    model = stripe_model()
    spaces = stripe_spaces(model, probe=probe)
    x, y = stripe_images(16, seed=3)
    traits = model.traits(x).detach().requires_grad_()
    logits = model.head(traits)
    (grad,) = torch.autograd.grad(adaptive_loss(logits, traits, y, spaces, CLASSES).sum(), traits)
    # the head reads channels 0 and 1 only: what reaches 2 and 3 came through the spaces' A_s
    assert (grad[:, 2:].abs().sum(1) > 0).all()
    cats = y == 0  # pushed to dog: raise dog's evidence (1 − B), lower cat's (B)
    assert (grad[cats, 2] < 0).all() and (grad[cats, 3] > 0).all()
    (plain,) = torch.autograd.grad(
        adaptive_loss(model.head(traits), traits, y, spaces, CLASSES, weight=0).sum(), traits
    )
    assert float(plain[:, 2:].abs().max()) == 0.0

    adv_plain = pgd_attack(model, x, y, 0.3, steps=10)
    adv = pgd_attack(model, x, y, 0.3, steps=10, spaces=spaces)
    assert float((adv[:, 2] - x[:, 2]).abs().max()) > 0.1  # the adaptive attack moves the semantics
    rival = 1 - y

    def rival_logit(images):
        ell = space_logits(spaces, model.traits(images)).detach()
        return ell[torch.arange(len(y)), rival] - ell[torch.arange(len(y)), y]

    assert float(rival_logit(adv).mean()) > float(rival_logit(adv_plain).mean()) + 1.0


def test_score_aware_attack_lowers_the_detector_score_it_knows():
    model = stripe_model()
    spaces = stripe_spaces(model)
    with torch.no_grad():
        out = model(stripe_images(300, seed=1)[0])
    detector = calibrate(out.logits, spaces.probabilities(out.traits), spaces, CLASSES, fpr=0.05)
    x, y = stripe_images(64, seed=6)

    def scores(images):
        with torch.no_grad():
            o = model(images)
        return detector.scores(
            o.logits, spaces.probabilities(o.traits), spaces, CLASSES
        ), o.logits.argmax(1)

    plain, plain_pred = scores(pgd_attack(model, x, y, 0.45, steps=10))
    aware, aware_pred = scores(
        pgd_attack(model, x, y, 0.45, steps=10, spaces=spaces, detector=detector)
    )
    assert float((aware_pred != y).float().mean()) >= 0.9  # still fools the classifier
    assert (plain > detector.threshold).mean() >= 0.9
    assert (aware > detector.threshold).mean() < (plain > detector.threshold).mean()
    assert float(np.median(aware)) < float(np.median(plain)) - 1.0
    with pytest.raises(ValueError, match="gap score"):
        pgd_attack(model, x, y, 0.1, steps=1, spaces=spaces, detector=Detector(score="paper"))


def test_adaptive_loss_stops_raising_the_confidence_at_its_cap():
    logits = torch.tensor(
        [[-6.0, 6.0], [1.0, 0.0]], requires_grad=True
    )  # label 0: wrong and sure; right
    traits = torch.zeros(2, 4, requires_grad=True)
    spaces = SpaceSet([toy_space("cat", "a", probe=True), toy_space("dog", "a", 3, probe=True)])
    loss = adaptive_loss(
        logits, traits, torch.tensor([0, 0]), spaces, CLASSES, weight=0.0, confidence=0.9
    )
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert float(grad[0].abs().max()) == 0.0 and float(grad[1].abs().max()) > 0
    assert float(loss.detach()[0]) == pytest.approx(-np.log(0.1))


@pytest.mark.parametrize("name", ["vgg19", "resnet18"])
def test_attacks_run_on_other_backbones(name):
    model = sx.create_model(name, pretrained=False, class_names=CLASSES).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model.logits(x).argmax(1)
    g = torch.Generator().manual_seed(1)
    spaces = SpaceSet(
        [
            SemanticSpace(
                c,
                "part",
                name,
                "x",
                model.trait_dim,
                torch.tensor([i]),
                torch.tensor([1.0]),
                probe=ProbeHead(torch.randn(model.trait_dim, generator=g), 0.0, 1.0, 0.0),
            )
            for i, c in enumerate(CLASSES)
        ]
    )
    ce = nn.functional.cross_entropy
    for adaptive in (None, spaces):
        adv = pgd_attack(model, x, labels, 0.05, steps=2, spaces=adaptive)
        assert float((adv - x).abs().max()) <= 0.05 + 1e-6 and float((adv - x).abs().max()) > 0
        if adaptive is None:
            with torch.no_grad():
                assert float(ce(model.logits(adv), labels)) > float(ce(model.logits(x), labels))


# ------------------------------------------------------------------------------------ storage
def test_detector_round_trips_and_refuses_bad_or_foreign_files(tmp_path):
    model = stripe_model()
    spaces = stripe_spaces(model)
    with torch.no_grad():
        out = model(stripe_images(100, seed=4)[0])
    detector = calibrate(
        out.logits,
        spaces.probabilities(out.traits),
        spaces,
        CLASSES,
        fpr=0.1,
        source=str(tmp_path),
        files=["a.png"],
    )
    path = detector.save(tmp_path)
    assert path.name == "detector.json"
    loaded = load_detector(tmp_path, spaces, CLASSES)
    assert loaded == detector and loaded.calibration_paths() == {(tmp_path / "a.png").resolve()}
    scores = loaded.scores(out.logits, spaces.probabilities(out.traits), spaces, CLASSES)
    assert float((scores > loaded.threshold).mean()) == pytest.approx(detector.calibration_fpr)
    assert loaded.verdict(loaded.threshold + 1) == {
        "flag": True,
        "score": loaded.threshold + 1,
        "threshold": loaded.threshold,
        "fpr": 0.1,
    }
    assert load_detector(tmp_path / "elsewhere", spaces, CLASSES) is None

    other = SpaceSet([toy_space("cat", "stripes"), toy_space("dog", "spots", 3)])
    rebuilt = stripe_spaces(model, probe=True)  # the same keys, other weights (say, v2 spaces)
    for wrong_spaces, classes, message in [
        (other, CLASSES, "recalibrate"),
        (rebuilt, CLASSES, "other versions"),
        (spaces, ["cat", "cow"], "classes"),
    ]:
        with pytest.raises(SpaceError, match=message):
            load_detector(tmp_path, wrong_spaces, classes, strict=True)
        with pytest.warns(DetectorWarning, match=message):  # a stale detector judges nothing
            assert load_detector(tmp_path, wrong_spaces, classes) is None
    raw = json.loads(path.read_text())
    for change, message in [
        ({"threshold": None}, "finite number"),
        ({"fpr": 1.5}, r"\(0, 1\)"),
        ({"score": "magic"}, "unknown"),
        ({"extra": 1}, "unknown detector fields"),
        ({"format": "other"}, "not an sxai detector"),
        ({"beta": -1.0}, "negative"),
    ]:
        path.write_text(json.dumps({**raw, **change}))
        with pytest.raises(SpaceError, match=message):
            load_detector(tmp_path, spaces, CLASSES)
    path.write_text("{not json")
    with pytest.raises(SpaceError, match="not a JSON detector"):
        load_detector(tmp_path, spaces, CLASSES)
