"""The paper's genetic search for the superpixels that make the model most sure of a class.

Paper algorithm ("Genetic algorithm" in Methods), as read here:

- genome: one bit per SLIC superpixel, 1 = kept; removed ones are filled (black by default);
- the initial ``population`` genomes are uniformly random bits;
- fitness: the softmax probability of the target class for the rebuilt image (ranked by its
  float64 log, which orders genomes exactly as the probability does but does not tie at 1.0
  where a confident CNN's float32 softmax saturates);
- every generation the population is sorted by fitness, the better half survives unchanged
  (so the best genome is kept until a better one beats it: the paper's elitism) and the other
  half is replaced by children: two survivors drawn at random exchange one random segment
  ``[i, j)`` of their genomes (two-point crossover, giving two children), then each child is
  mutated with probability ``mutation``;
- mutation ("randomly selecting genes and conducting bitwise negation"): with
  ``mutation_scope="genome"`` (default), a child chosen with probability ``mutation`` has between
  1 and ``max(1, S // 10)`` randomly selected genes negated, which keeps children close to their
  parents; ``mutation_scope="bit"`` negates every gene of every child independently with
  probability ``mutation``, as the authors' released code does (at 0.5 this makes children
  uniformly random, i.e. random search with elitism).

Speed without changing answers: all images' new genomes of a generation are rebuilt and scored in
batched forward passes (``batch_size`` at a time, ``torch.inference_mode``, channels-last input);
each image keeps a cache, so a genome is never scored twice (survivors are not re-scored), and
``n_evaluations`` counts real forward-pass rows. All random draws come from one numpy Generator
per image (image ``n`` of a call gets child ``n`` of ``SeedSequence(seed)``) and never depend on
how the scoring is batched, so ``batch_size`` and the other images in the call do not change an
image's answer. Only the model's own rounding differs between batch sizes (conv kernels pick other
algorithms: ~1e-7 in the tiny test models' probabilities, ~1e-6 in Lite0's logits on CPU), which
changes the chosen genomes only where two genomes' scores tie to that precision.

``mode="fast"`` (opt-in, not the paper's): one occlusion pass (the full image and each single
superpixel removed, ``S + 1`` passes) ranks superpixels by how much their removal lowers the
score; the population (``fast_population``) is seeded with the full image, the best occlusion and
the ``k`` highest-ranked superpixels for ``k`` spread over ``1 … S``; then the same GA runs and stops
early once the best fitness has not improved by ``min_improvement`` for ``patience`` generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from .._utils.errors import SxaiError
from ..data.superpixels import FILLS, backgrounds, compose_indexed, fill_removed, slic_many
from ..models.trait_model import TraitModel


class GeneticSearchError(SxaiError, ValueError):
    """Inputs to the genetic search that cannot work (wrong sizes, targets, settings)."""


@dataclass
class GAConfig:
    """Settings of :func:`search_best_superpixels`; defaults are the paper's."""

    population: int = 50
    generations: int = 50
    mutation: float = 0.5
    mutation_scope: Literal["genome", "bit"] = "genome"
    n_segments: int = 40
    compactness: float = 10.0
    sigma: float = 1.0
    fill: Literal["black", "mean", "blur"] = "black"
    mode: Literal["paper", "fast"] = "paper"
    patience: int = 5  # fast mode: generations without improvement before stopping
    min_improvement: float = 1e-4  # fast mode: smaller gains count as no improvement
    fast_population: int = 10  # fast mode: the seeded population is this small
    batch_size: int = 50  # genomes per forward pass
    channels_last: bool = True  # channels-last input: ~1.7× faster for Lite0 on CPU here
    # two groups of images take turns, so one group's children are bred on the CPU while the
    # device scores the other's; None = on for CUDA (where scoring is asynchronous). The
    # answers are the same either way.
    pipeline: bool | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.population < 2 or self.fast_population < 2:
            problems.append("population and fast_population must be at least 2")
        if self.generations < 0:
            problems.append("generations must be 0 or more")
        if not 0.0 <= self.mutation <= 1.0:
            problems.append(f"mutation is a probability, got {self.mutation}")
        if self.mutation_scope not in ("genome", "bit"):
            problems.append(
                f"mutation_scope must be 'genome' or 'bit', got {self.mutation_scope!r}"
            )
        if self.fill not in FILLS:
            problems.append(f"fill must be one of {', '.join(FILLS)}, got {self.fill!r}")
        if self.mode not in ("paper", "fast"):
            problems.append(f"mode must be 'paper' or 'fast', got {self.mode!r}")
        if self.patience < 1:
            problems.append("patience must be at least 1")
        if self.batch_size < 1:
            problems.append("batch_size must be at least 1")
        if self.n_segments < 1:
            problems.append("n_segments must be at least 1")
        if problems:
            raise GeneticSearchError("invalid GAConfig: " + "; ".join(problems))

    @property
    def size(self) -> int:
        """The population size the chosen mode uses."""
        return self.population if self.mode == "paper" else self.fast_population


@dataclass
class GAResult:
    """The best superpixel subset found for one image."""

    segments: np.ndarray  # H×W int32, labels 0 … S-1
    genome: np.ndarray  # bool[S], True = kept
    fitness: float  # target-class probability of ``image``
    kept_mask: np.ndarray  # H×W bool
    image: np.ndarray  # H×W×3 float32: the best genome rebuilt
    n_evaluations: int  # forward-pass rows spent on this image
    history: list[float] = field(default_factory=list)  # best fitness: start, then per generation


class _Pending:
    """Scores still being computed on the device; ``result()`` waits for them."""

    def __init__(self, scores: torch.Tensor, event: torch.cuda.Event | None, keep: list) -> None:
        self._scores = scores
        self._event = event
        self._keep = keep  # pinned inputs must outlive the copies that read them

    def result(self) -> np.ndarray:
        if self._event is not None:
            self._event.synchronize()
        self._keep = []
        return self._scores.numpy()


class _Scorer:
    """Rebuilds (image, genome) pairs and scores them in batched forward passes.

    On a GPU, :meth:`submit` only queues the work (pinned, non-blocking copies; no value is read
    back until :meth:`_Pending.result`), so the caller can build the next genomes meanwhile.
    """

    def __init__(
        self,
        model: TraitModel,
        images: Sequence[np.ndarray],
        segments: Sequence[np.ndarray],
        targets: Sequence[int],
        config: GAConfig,
    ) -> None:
        self.model = model
        self.config = config
        device = next(model.parameters()).device
        # channels-last storage (H×W×3 in memory), the layout compose_indexed works in
        pixels = torch.from_numpy(np.stack(images).astype(np.float32)).to(device)
        self.images = pixels.permute(0, 3, 1, 2)
        self.segments = torch.from_numpy(np.stack(segments).astype(np.int64)).to(device)
        self.fills = None if config.fill == "black" else backgrounds(self.images, config.fill)
        self.targets = torch.as_tensor(list(targets), dtype=torch.long, device=device)
        self.device = device
        self.asynchronous = device.type == "cuda"

    def _upload(self, array: np.ndarray, keep: list) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if not self.asynchronous:
            return tensor.to(self.device)
        pinned = tensor.pin_memory()
        keep.append(pinned)
        return pinned.to(self.device, non_blocking=True)

    def submit(self, owners: np.ndarray, genomes: np.ndarray) -> _Pending:
        """Queue the target-class log-probability of each (owner image, genome) pair."""
        keep: list = []
        scores: list[torch.Tensor] = []
        for start in range(0, len(owners), self.config.batch_size):
            part = slice(start, start + self.config.batch_size)
            owner = self._upload(np.ascontiguousarray(owners[part]), keep)
            batch = compose_indexed(
                self.images,
                self.segments,
                self.fills,
                owner,
                self._upload(np.ascontiguousarray(genomes[part]), keep),
                validate=False,  # genomes are padded to the widest segmentation by construction
            )
            if not self.config.channels_last:
                batch = batch.contiguous()
            # log-probabilities in float64 rank exactly like the paper's probabilities but stay
            # distinct where float32 softmax saturates at 1.0 and would make the GA blind
            log_p = self.model.logits(batch).double().log_softmax(dim=1)
            scores.append(log_p[torch.arange(len(owner), device=self.device), self.targets[owner]])
        joined = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)
        if not self.asynchronous:
            return _Pending(joined.cpu(), None, keep)
        host = torch.empty(joined.shape, dtype=joined.dtype, pin_memory=True)
        host.copy_(joined, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Pending(host, event, keep)

    def __call__(self, owners: np.ndarray, genomes: np.ndarray) -> np.ndarray:
        """Target-class log-probability of each (owner image, genome) pair."""
        return self.submit(owners, genomes).result()


class _Search:
    """The GA state of one image; every random draw comes from its own Generator."""

    def __init__(
        self,
        index: int,
        segments: np.ndarray,
        genes: int,
        rng: np.random.Generator,
        config: GAConfig,
    ):
        self.index = index
        self.segments = segments
        self.length = int(segments.max()) + 1
        self.genes = genes  # padded genome width shared by all images of the call
        self.rng = rng
        self.config = config
        self.cache: dict[bytes, float] = {}  # genome bytes -> log-probability
        self.population = np.zeros((0, self.length), dtype=bool)
        self.log_fitness = np.zeros(0)  # log-probabilities, best first
        self.history: list[float] = []
        self.active = True
        self.stale = 0  # generations since the best last rose by min_improvement
        self.reference = 0.0  # the best fitness at that rise

    def unseen(self, genomes: np.ndarray) -> list[np.ndarray]:
        """Genomes not scored yet, each once, in order."""
        fresh: dict[bytes, np.ndarray] = {}
        for genome in genomes:
            key = genome.tobytes()
            if key not in self.cache and key not in fresh:
                fresh[key] = genome
        return list(fresh.values())

    def record(self, genomes: Sequence[np.ndarray], scores: np.ndarray) -> None:
        for genome, score in zip(genomes, scores):
            self.cache[genome.tobytes()] = float(score)

    @property
    def n_evaluations(self) -> int:
        return len(self.cache)

    def adopt(self, genomes: np.ndarray) -> None:
        """Make ``genomes`` (all scored) the population, best first, cut to the population size."""
        scores = np.array([self.cache[g.tobytes()] for g in genomes])
        order = np.argsort(-scores, kind="stable")[: self.config.size]
        self.population, self.log_fitness = genomes[order], scores[order]
        best = float(np.exp(self.log_fitness[0]))
        # compared with the best at the last real improvement, so a string of tiny gains
        # cannot keep the search alive forever, nor stop it once they add up
        if self.history and best < self.reference + self.config.min_improvement:
            self.stale += 1
        else:
            self.stale, self.reference = 0, best
        self.history.append(best)
        if self.config.mode == "fast" and self.stale >= self.config.patience:
            self.active = False

    def random_population(self) -> np.ndarray:
        return self.rng.random((self.config.size, self.length)) < 0.5

    def occlusion_genomes(self) -> np.ndarray:
        """The full image, then each superpixel removed alone."""
        return np.vstack([np.ones((1, self.length), dtype=bool), ~np.eye(self.length, dtype=bool)])

    def seeded_population(self, occlusions: np.ndarray) -> np.ndarray:
        """Fast mode's start: the full image, the best occlusion and the top-k superpixels by
        how much removing them alone lowers the score."""
        scores = np.array([self.cache[g.tobytes()] for g in occlusions])
        drop = scores[0] - scores[1:]
        ranked = np.argsort(-drop, kind="stable")
        seeds = [occlusions[0], occlusions[1 + int(np.argmax(scores[1:]))]]
        sizes = np.unique(
            np.linspace(1, self.length, max(self.config.size - len(seeds), 1)).round()
        )
        for k in sizes.astype(int):
            genome = np.zeros(self.length, dtype=bool)
            genome[ranked[:k]] = True
            seeds.append(genome)
        return np.array(seeds)

    def children(self) -> np.ndarray:
        """Crossover of random survivor pairs, then mutation: the replaced half of the population."""
        size = self.config.size
        survivors = self.population[: size // 2]
        count = size - len(survivors)
        made: list[np.ndarray] = []
        while len(made) < count:
            a, b = self.rng.choice(len(survivors), size=2, replace=len(survivors) < 2)
            i, j = np.sort(self.rng.integers(0, self.length + 1, size=2))
            first, second = survivors[a].copy(), survivors[b].copy()
            first[i:j], second[i:j] = survivors[b][i:j], survivors[a][i:j]
            made.extend([first, second])
        kids = np.array(made[:count])
        return self.mutate(kids)

    def mutate(self, kids: np.ndarray) -> np.ndarray:
        if self.config.mutation_scope == "bit":
            return kids ^ (self.rng.random(kids.shape) < self.config.mutation)
        chosen = self.rng.random(len(kids)) < self.config.mutation
        most = max(1, self.length // 10)
        for row in np.flatnonzero(chosen):
            flips = self.rng.choice(
                self.length, size=int(self.rng.integers(1, most + 1)), replace=False
            )
            kids[row, flips] = ~kids[row, flips]
        return kids

    def pad(self, genome: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.genes, dtype=bool)
        padded[: self.length] = genome
        return padded


class _Round:
    """One round of scoring: every unseen proposed genome of each image, in shared batches.

    Submitting queues the work; :meth:`finish` records the scores in the images' caches.
    """

    def __init__(
        self, searches: Sequence[_Search], proposals: dict[int, np.ndarray], scorer: _Scorer
    ) -> None:
        self.by_index = {s.index: s for s in searches}
        self.fresh = {
            s.index: s.unseen(proposals[s.index]) for s in searches if s.index in proposals
        }
        owners = np.array([i for i, genomes in self.fresh.items() for _ in genomes], dtype=np.int64)
        self.pending = None
        if len(owners):
            padded = np.array(
                [self.by_index[i].pad(g) for i, genomes in self.fresh.items() for g in genomes]
            )
            self.pending = scorer.submit(owners, padded)

    def finish(self) -> None:
        if self.pending is None:
            return
        scores = self.pending.result()
        start = 0
        for i, genomes in self.fresh.items():
            self.by_index[i].record(genomes, scores[start : start + len(genomes)])
            start += len(genomes)


def _score_round(
    searches: Sequence[_Search], proposals: dict[int, np.ndarray], scorer: _Scorer
) -> None:
    """Score every unseen proposed genome of every image in shared batched passes."""
    _Round(searches, proposals, scorer).finish()


def _check_inputs(
    model: TraitModel,
    images: Sequence[np.ndarray],
    targets: Sequence[int],
    segments: Sequence[np.ndarray] | None,
) -> None:
    if len(images) != len(targets):
        raise GeneticSearchError(
            f"got {len(images)} images but {len(targets)} targets; give one target each"
        )
    size = tuple(model.input_size[1:])
    for n, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or tuple(image.shape[:2]) != size:
            raise GeneticSearchError(
                f"image {n} has shape {image.shape}, the model needs {size[0]}×{size[1]}×3; resize "
                "first, e.g. sxai_plugins.data.images.to_array(load_image(path), size)"
            )
        if image.size and (image.min() < 0 or image.max() > 1):
            raise GeneticSearchError(f"image {n} has values outside [0, 1]; divide by 255")
    for n, target in enumerate(targets):
        if not 0 <= int(target) < model.num_classes:
            raise GeneticSearchError(
                f"target {target} of image {n} is not a class index of the model (0 … {model.num_classes - 1}: "
                f"{', '.join(model.class_names)})"
            )
    if segments is not None:
        if len(segments) != len(images):
            raise GeneticSearchError(f"got {len(segments)} segmentations for {len(images)} images")
        for n, labels in enumerate(segments):
            if labels.shape != images[n].shape[:2]:
                raise GeneticSearchError(
                    f"segments {n} have shape {labels.shape}, image {n} is {images[n].shape[:2]}"
                )
            if set(np.unique(labels).tolist()) != set(range(int(labels.max()) + 1)):
                raise GeneticSearchError(
                    f"segments {n} must use consecutive labels 0 … S-1 (as slic_segments gives)"
                )


def search_best_superpixels(
    model: TraitModel,
    images: Sequence[np.ndarray],
    targets: Sequence[int],
    config: GAConfig | None = None,
    seed: int = 0,
    progress: bool = True,
    segments: Sequence[np.ndarray] | None = None,
    first_index: int = 0,
) -> list[GAResult]:
    """For each image, the superpixel subset that maximises the target class's probability.

    Args:
        model: the classifier; put in eval mode for the search, its mode restored after.
        images: ``H×W×3`` arrays in [0, 1], already at the model's input size.
        targets: the class index to maximise, one per image.
        config: GA settings (default: the paper's).
        seed: seeds every random draw; the same seed gives identical results.
        progress: show a progress bar over generations.
        segments: optional precomputed consecutive labels per image (default: SLIC with the
            config's ``n_segments``, ``compactness`` and ``sigma``).
        first_index: image ``n`` draws from child ``first_index + n`` of ``SeedSequence(seed)``,
            so a call on ``images[k:]`` with ``first_index=k`` gives exactly what those images
            get in one call on all of ``images`` (used to reuse searches already done).

    Returns:
        one :class:`GAResult` per image, in order.
    """
    config = config or GAConfig()
    _check_inputs(model, images, targets, segments)
    if not images:
        return []
    if segments is None:
        segments = slic_many(images, config.n_segments, config.compactness, config.sigma)
    segments = [np.asarray(s, dtype=np.int32) for s in segments]
    genes = max(int(s.max()) + 1 for s in segments)
    if first_index < 0:
        raise GeneticSearchError(f"first_index must be 0 or more, got {first_index}")
    # the same SeedSequences as SeedSequence(seed).spawn(first_index + len(images))[first_index:]
    generators = [
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(first_index + n,)))
        for n in range(len(images))
    ]
    searches = [_Search(n, segments[n], genes, generators[n], config) for n in range(len(images))]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            scorer = _Scorer(model, images, segments, targets, config)
            _run(searches, scorer, config, progress)
    finally:
        model.train(was_training)
    return [_result(s, images[s.index], config) for s in searches]


def _run(searches: list[_Search], scorer: _Scorer, config: GAConfig, progress: bool) -> None:
    if config.mode == "fast":
        occlusions = {s.index: s.occlusion_genomes() for s in searches}
        _score_round(searches, occlusions, scorer)
        start = {s.index: s.seeded_population(occlusions[s.index]) for s in searches}
    else:
        start = {s.index: s.random_population() for s in searches}
    _score_round(searches, start, scorer)
    for s in searches:
        s.adopt(start[s.index])
    # Pipelined (config.pipeline), the images are split into two groups, so that the CPU breeds
    # one group's children while the GPU scores the other's. Each image's own sequence of draws
    # and scores is the same as with one group, so the answers are too.
    pipeline = scorer.asynchronous if config.pipeline is None else config.pipeline
    groups = [searches[: len(searches) // 2], searches[len(searches) // 2 :]]
    if not pipeline or len(searches) < 2:
        groups = [searches]
    in_flight: list[tuple[_Round, dict[int, np.ndarray]] | None] = [None] * len(groups)

    def breed(group: list[_Search]) -> tuple[_Round, dict[int, np.ndarray]] | None:
        active = [s for s in group if s.active]
        if not active:
            return None
        kids = {s.index: s.children() for s in active}
        return _Round(active, kids, scorer), kids

    def settle(flight: tuple[_Round, dict[int, np.ndarray]] | None) -> None:
        if flight is None:
            return
        scoring, kids = flight
        scoring.finish()
        for index, children in kids.items():
            s = scoring.by_index[index]
            s.adopt(np.vstack([s.population[: config.size // 2], children]))

    with tqdm(
        total=config.generations, desc="genetic search", unit="gen", disable=not progress
    ) as bar:
        for generation in range(config.generations + 1):
            for g, group in enumerate(groups):
                settle(in_flight[g])  # generation - 1's children of this group
                in_flight[g] = breed(group) if generation < config.generations else None
            if generation:
                bar.update(1)
                bar.set_postfix(
                    best=f"{np.median([s.history[-1] for s in searches]):.4f}",
                    evals=sum(s.n_evaluations for s in searches),
                )
            if all(flight is None for flight in in_flight):
                break


def _result(search: _Search, image: np.ndarray, config: GAConfig) -> GAResult:
    genome = search.population[0].copy()
    return GAResult(
        segments=search.segments,
        genome=genome,
        fitness=float(np.exp(search.log_fitness[0])),
        kept_mask=genome[search.segments],
        image=fill_removed(image, search.segments, genome, config.fill),
        n_evaluations=search.n_evaluations,
        history=list(search.history),
    )
