"""Row-centred PCA: the common traits of N images as C-vectors.

Each image's trait row is centred over its C channels (not each channel over the images, as in the
usual PCA). The N×N covariance ``S = X̂ X̂ᵀ / (C − 1)`` is eigen-decomposed, and the PC scores are
``X̂ᵀ U``: one C-vector per component, which lives in trait space and can be inverted to an image.
This equals scikit-learn's ``PCA`` fitted on ``Xᵀ`` (channels as samples) up to sign.

Sign rule (deterministic, so repeats compare): each PC is flipped so that its scores correlate
positively with the mean trait vector of the images; if that correlation is exactly zero, so that
its largest-magnitude score is positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_float64(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected an N×C matrix, got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"row-centred PCA needs at least 2 images, got {x.shape[0]}")
    return x


def row_centre(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=1, keepdims=True)


@dataclass
class RowCentredPCA:
    """``fit(X)`` on an N×C trait matrix.

    Args:
        n_components: keep this many PCs; default: the fewest reaching ``variance``.
        variance: cumulative information ratio to reach when ``n_components`` is None.

    After fit:
        components_: k×C PC scores (``components_[0]`` is PC1, the common trait).
        explained_variance_: eigenvalues of S for all min(N, C) components.
        explained_variance_ratio_: information ratio of every component (eigenvalue / trace).
        eigenvectors_: N×k loadings of the images on the kept PCs.
    """

    n_components: int | None = None
    variance: float = 0.85

    def fit(self, x: np.ndarray | torch.Tensor) -> RowCentredPCA:
        x = _as_float64(x)
        n, c = x.shape
        centred = row_centre(x)
        cov = centred @ centred.T / max(c - 1, 1)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)[: min(n, c)]
        eigenvectors = eigenvectors[:, order][:, : min(n, c)]
        total = eigenvalues.sum()
        ratio = eigenvalues / total if total > 0 else np.zeros_like(eigenvalues)
        if self.n_components is not None:
            k = min(int(self.n_components), len(ratio))
        else:
            k = int(np.searchsorted(np.cumsum(ratio), self.variance - 1e-12) + 1)
            k = min(max(k, 1), len(ratio))
        scores = centred.T @ eigenvectors[:, :k]  # C × k
        mean_trait = x.mean(axis=0)
        for j in range(k):
            column = scores[:, j]
            direction = np.dot(column - column.mean(), mean_trait - mean_trait.mean())
            if direction == 0:
                direction = column[np.argmax(np.abs(column))]
            if direction < 0:
                scores[:, j] = -column
                eigenvectors[:, j] = -eigenvectors[:, j]
        self.components_ = scores.T.copy()
        self.explained_variance_ = eigenvalues
        self.explained_variance_ratio_ = ratio
        self.eigenvectors_ = eigenvectors[:, :k].copy()
        self.n_components_ = k
        return self

    @property
    def pc1(self) -> np.ndarray:
        return self.components_[0]


def first_pc(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """PC1 scores (a C-vector) of an N×C trait matrix."""
    return RowCentredPCA(n_components=1).fit(x).pc1


def spread(pcs: np.ndarray) -> float:
    """Stability of PC scores across repeats, in percent.

    ``pcs`` is R×C (one PC1 per repeat). e = mean over features j and repeats i of
    |s_j^i − mean_i s_j^i|, relative to the mean |score| so that it reads as a percentage.
    """
    pcs = np.asarray(pcs, dtype=np.float64)
    if pcs.ndim != 2 or pcs.shape[0] < 2:
        raise ValueError("spread needs at least 2 repeats of a C-vector (an R×C array)")
    deviation = np.abs(pcs - pcs.mean(axis=0, keepdims=True)).mean()
    scale = np.abs(pcs).mean()
    return float(100.0 * deviation / scale) if scale > 0 else 0.0
