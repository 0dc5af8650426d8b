"""Row-centred PCA against independent computations (scikit-learn, numpy SVD), and ``spread``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.decomposition import PCA

from sxai_plugins.traits.pca import RowCentredPCA, first_pc, row_centre, spread


def traits_matrix(n: int = 12, c: int = 40, seed: int = 0) -> np.ndarray:
    """Non-negative, correlated trait rows like GAP outputs: a shared profile plus noise."""
    rng = np.random.default_rng(seed)
    profile = rng.gamma(2.0, 1.0, size=c)
    weights = rng.uniform(0.5, 1.5, size=(n, 1))
    return np.abs(weights * profile + rng.normal(0, 0.4, size=(n, c)))


def align_sign(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` with each row's sign chosen to agree with ``reference``."""
    signs = np.sign(np.sum(reference * other, axis=1, keepdims=True))
    return other * signs


@pytest.mark.parametrize("shape", [(12, 40), (30, 8), (5, 5)])
def test_matches_sklearn_pca_on_the_transposed_matrix(shape):
    x = traits_matrix(*shape, seed=1)
    k = min(shape) - 1
    ours = RowCentredPCA(n_components=k).fit(x)
    # channels as samples, images as features: sklearn's column centring is our row centring
    reference = PCA(n_components=k, svd_solver="full").fit(x.T)
    scores = reference.transform(x.T).T  # k×C
    np.testing.assert_allclose(
        ours.components_, align_sign(ours.components_, scores), rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(
        ours.explained_variance_[:k], reference.explained_variance_, rtol=1e-9
    )
    np.testing.assert_allclose(
        ours.explained_variance_ratio_[:k], reference.explained_variance_ratio_, rtol=1e-9
    )


def test_matches_numpy_svd():
    x = traits_matrix(15, 60, seed=2)
    centred = x - x.mean(axis=1, keepdims=True)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    ours = RowCentredPCA(n_components=4).fit(x)
    expected_scores = (vt[:4].T * s[:4]).T  # X̂ᵀU = VΣ
    np.testing.assert_allclose(
        ours.components_, align_sign(ours.components_, expected_scores), atol=1e-9
    )
    np.testing.assert_allclose(
        ours.explained_variance_, s**2 / (x.shape[1] - 1), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(np.abs(ours.eigenvectors_), np.abs(u[:, :4]), atol=1e-9)


def test_pc1_is_the_shared_profile():
    rng = np.random.default_rng(3)
    profile = rng.gamma(2.0, 1.0, size=50)
    x = rng.uniform(0.5, 2.0, size=(20, 1)) * profile + rng.normal(0, 0.05, size=(20, 50))
    pca = RowCentredPCA().fit(x)
    correlation = np.corrcoef(pca.pc1, profile)[0, 1]
    assert correlation > 0.999  # positive too: the sign rule points PC1 along the mean trait
    assert pca.explained_variance_ratio_[0] > 0.95
    assert pca.n_components_ == 1


def test_sign_rule_points_every_pc_along_the_mean_trait():
    x = traits_matrix(10, 30, seed=4)
    pca = RowCentredPCA(n_components=5).fit(x)
    mean_trait = row_centre(x.mean(axis=0, keepdims=True))[0]
    for scores in pca.components_:
        assert np.dot(scores - scores.mean(), mean_trait) > 0


def test_sign_rule_makes_the_result_independent_of_image_order():
    x = traits_matrix(10, 30, seed=5)
    order = np.random.default_rng(0).permutation(len(x))
    a = RowCentredPCA(n_components=3).fit(x)
    b = RowCentredPCA(n_components=3).fit(x[order])
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-9)  # same signs, not just |·|
    np.testing.assert_allclose(a.eigenvectors_[order], b.eigenvectors_, atol=1e-9)


def test_sign_rule_falls_back_to_the_largest_score_when_uncorrelated():
    # the mean trait of these rows is constant after row centring: no correlation to follow
    x = np.array(
        [[1.0, 0.0, -1.0, 0.0], [-1.0, 0.0, 1.0, 0.0], [0.0, 3.0, 0.0, -3.0], [0.0, -3.0, 0.0, 3.0]]
    )
    pca = RowCentredPCA(n_components=2).fit(x)
    for scores in pca.components_:
        assert scores[np.argmax(np.abs(scores))] > 0


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(2, 12), st.integers(3, 20)),
        elements=st.floats(0, 10, allow_nan=False),
    )
)
def test_information_ratios_sum_to_one_and_are_sorted(x):
    if np.allclose(row_centre(x), 0):
        return  # every row constant: no variance to share out
    pca = RowCentredPCA().fit(x)
    ratios = pca.explained_variance_ratio_
    assert ratios.sum() == pytest.approx(1.0, abs=1e-9)
    assert np.all(np.diff(ratios) <= 1e-12)
    assert np.all(ratios >= 0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 0.99))
def test_k_is_the_fewest_pcs_reaching_the_variance(seed, variance):
    x = np.random.default_rng(seed).gamma(1.5, 1.0, size=(9, 25))
    pca = RowCentredPCA(variance=variance).fit(x)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    k = pca.n_components_
    assert cumulative[k - 1] >= variance - 1e-12
    assert k == 1 or cumulative[k - 2] < variance
    assert pca.components_.shape == (k, 25)
    assert pca.eigenvectors_.shape == (9, k)


def test_default_variance_is_the_papers_85_percent():
    x = traits_matrix(20, 50, seed=6)
    pca = RowCentredPCA().fit(x)
    cumulative = np.cumsum(pca.explained_variance_ratio_)
    assert (
        cumulative[pca.n_components_ - 1]
        >= 0.85
        > (cumulative[pca.n_components_ - 2] if pca.n_components_ > 1 else 0)
    )


def test_explicit_n_components_is_capped_at_the_rank_bound():
    x = traits_matrix(4, 30, seed=7)
    pca = RowCentredPCA(n_components=10).fit(x)
    assert pca.n_components_ == 4
    assert len(pca.explained_variance_) == 4


def test_first_pc_is_pc1():
    x = traits_matrix(8, 16, seed=8)
    np.testing.assert_allclose(first_pc(x), RowCentredPCA().fit(x).pc1)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    x = traits_matrix(6, 12, seed=9)
    np.testing.assert_allclose(
        first_pc(torch.from_numpy(x).float()), first_pc(x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("bad", [np.zeros((1, 5)), np.zeros(5), np.zeros((2, 3, 4))])
def test_rejects_fewer_than_two_images_or_wrong_rank(bad):
    with pytest.raises(ValueError):
        RowCentredPCA().fit(bad)


# --------------------------------------------------------------------------------------------- spread
def test_spread_is_zero_for_identical_repeats():
    pc = traits_matrix(1, 20)[0]
    assert spread(np.stack([pc, pc, pc])) == pytest.approx(0.0, abs=1e-12)


def test_spread_worked_example():
    # mean over repeats [2, 2]; |deviation| 1 everywhere; mean |score| 2 -> 50 %
    assert spread(np.array([[1.0, 1.0], [3.0, 3.0]])) == pytest.approx(50.0)


def test_spread_is_scale_free_and_grows_with_disagreement():
    rng = np.random.default_rng(10)
    base = rng.gamma(2.0, 1.0, size=64)
    close = np.stack([base + rng.normal(0, 0.01, 64) for _ in range(3)])
    far = np.stack([base + rng.normal(0, 0.5, 64) for _ in range(3)])
    assert spread(close) < spread(far)
    assert spread(7.5 * far) == pytest.approx(spread(far))


def test_spread_of_pc1_falls_with_more_samples():
    """The paper's Fig. 2d trend on synthetic traits: a larger Ns gives a steadier PC1."""
    rng = np.random.default_rng(11)
    profile = rng.gamma(2.0, 1.0, size=64)
    population = np.abs(rng.uniform(0.5, 1.5, (2000, 1)) * profile + rng.normal(0, 1.0, (2000, 64)))
    spreads = []
    for n in (10, 50, 300):
        pcs = np.stack([first_pc(population[rng.choice(2000, n, replace=False)]) for _ in range(3)])
        spreads.append(spread(pcs))
    assert spreads[0] > spreads[1] > spreads[2]


def test_spread_needs_two_repeats():
    with pytest.raises(ValueError):
        spread(np.ones((1, 5)))
