"""The one inference path: channels-last + inference mode + prefetched decoding gives the NCHW
path's numbers, reports bad files in order, and leaves the model as it found it."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from sxai_plugins.data.images import iter_batches, list_images
from sxai_plugins.models.inference import channels_last, iter_outputs, model_size, score_paths
from sxai_plugins.models.trait_model import TraitModel

TOL = dict(rtol=0, atol=1e-5)


def tiny_timm_model() -> TraitModel:
    torch.manual_seed(0)
    body = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    return TraitModel(
        body, body.num_features, ["a", "b", "c"], name="resnet10t", input_size=(3, 64, 64)
    ).eval()


def nchw(model: TraitModel, paths, batch_size: int):
    """The path every command ran before: NCHW, no_grad, decoding in line. The third result is what
    spaces read: the traits, then the layers the model pools (none: the traits alone)."""
    out_paths, logits, traits = [], [], []
    with torch.no_grad():
        for batch in iter_batches(paths, model_size(model), batch_size, []):
            out = model(batch.images)
            out_paths += batch.paths
            logits.append(out.logits)
            traits.append(out.features(model.pooled_layers))
    return out_paths, torch.cat(logits), torch.cat(traits)


def synthetic_images(folder, n: int = 11):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        side = (40 + 13 * i, 90 - 3 * i)
        path = folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (*side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("loader", ["thread", "workers", "none"])
def test_same_numbers_as_nchw_and_bad_files_in_order(tmp_path, loader) -> None:
    model = tiny_timm_model()
    paths = synthetic_images(tmp_path)
    (tmp_path / "bad1.jpg").write_text("no image")
    (tmp_path / "bad2.png").write_bytes(b"\x89PNG broken")
    paths.insert(0, tmp_path / "bad1.jpg")
    paths.insert(6, tmp_path / "bad2.png")
    paths.append(tmp_path / "missing.jpg")
    ref_paths, ref_logits, ref_traits = nchw(model, paths, 4)

    failures: list = []
    seen = []
    got_paths, logits, traits = [], [], []
    for batch in iter_outputs(model, paths, 4, failures, loader=loader, workers=2):
        seen.append(len(failures))  # failures before each batch are known by the time it comes
        got_paths += batch.paths
        logits.append(batch.output.logits)
        traits.append(batch.output.traits)
    assert got_paths == ref_paths and len(got_paths) == 11
    assert seen == [1, 2, 3]  # batches of 4, 4 and 3 readable images, as iter_batches gives them
    assert [p.name for p, _ in failures] == ["bad1.jpg", "bad2.png", "missing.jpg"]
    torch.testing.assert_close(torch.cat(logits), ref_logits, **TOL)
    torch.testing.assert_close(torch.cat(traits), ref_traits, **TOL)
    assert all(p.is_contiguous() for p in model.parameters())  # back in NCHW


def test_model_is_restored_and_still_differentiable(tmp_path) -> None:
    model = tiny_timm_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with channels_last(model):
        conv = next(p for p in model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
    assert all(p.is_contiguous() for p in model.parameters())
    for key, value in model.state_dict().items():
        assert value.equal(before[key])
    # an early break closes the generator, which restores the model; images can be attacked
    paths = synthetic_images(tmp_path, 3)
    for batch in iter_outputs(model, paths, 2, keep_images=True):
        x = batch.images.clone().requires_grad_(True)
        model.logits(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        break
    assert all(p.is_contiguous() for p in model.parameters())
    assert not any(p.is_inference() for p in model.parameters())


def test_score_paths_and_errors(tmp_path) -> None:
    model = tiny_timm_model()
    paths = synthetic_images(tmp_path, 5)
    scored = score_paths(model, paths, batch_size=2, progress=False)
    _, ref_logits, ref_traits = nchw(model, paths, 2)
    torch.testing.assert_close(scored.logits, ref_logits, **TOL)
    torch.testing.assert_close(scored.traits, ref_traits, **TOL)
    with pytest.raises(Exception, match="CUDA"):
        next(iter_outputs(model, paths, precision="bf16"))
    with pytest.raises(Exception, match="unknown precision"):
        next(iter_outputs(model, paths, precision="int8"))


@pytest.mark.integration
def test_default_model_matches_nchw_on_real_images(default_model, shared_data) -> None:
    from sxai_plugins.explain.trust import assess, assess_outputs, load_space_set

    paths = (
        list_images(shared_data / "train" / "cat")[:24]
        + list_images(shared_data / "train" / "dog")[:24]
    )
    spaces = load_space_set(None, default_model)
    ref_paths, ref_logits, ref_traits = nchw(default_model, paths, 16)
    batches = list(iter_outputs(default_model, paths, 16))
    logits = torch.cat([b.output.logits for b in batches])
    # the bundled spaces read pooled stages too: compare everything they read
    traits = torch.cat([b.output.features(spaces.layer_names) for b in batches])
    assert [p for b in batches for p in b.paths] == ref_paths
    torch.testing.assert_close(logits, ref_logits, **TOL)
    c = default_model.trait_dim
    torch.testing.assert_close(traits[:, :c], ref_traits[:, :c], **TOL)
    # intermediate stages run at larger magnitudes: channels-last reorders their sums by ~1e-5
    torch.testing.assert_close(traits[:, c:], ref_traits[:, c:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        spaces.probabilities(traits), spaces.probabilities(ref_traits), **TOL
    )
    # explain's path: the same assessments as assess() on the images
    first = next(iter_batches(paths[:16], model_size(default_model), 16))
    with torch.no_grad():
        ref = assess(default_model, spaces, first.images, first.paths)
    got = assess_outputs(default_model, spaces, batches[0].output, batches[0].paths)
    for a, b in zip(ref, got):
        assert a.predicted == b.predicted
        np.testing.assert_allclose(
            [s.probability for s in a.spaces], [s.probability for s in b.spaces], atol=1e-5
        )
