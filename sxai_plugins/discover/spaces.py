"""Semantic spaces from named discoveries, by the same probe recipe as annotated spaces: the named
clusters' masks (``masks.coco.json`` in each discovery folder) are read back as COCO concept
annotations, and every (class, named concept) gets a calibrated concept probe trained on the
originals, the concept-masked copies, control-masked copies and other classes' images showing the
concept (:mod:`sxai_plugins.spaces.probes`).

An image in which no cluster of a concept occurs is *not* taken as a natural negative by default:
a clustering that missed a part is no evidence that the part is absent (``natural_negatives=True``
takes it as one)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .naming import CORE, MASKS_FILE, Naming, read_naming, write_masks
from .run import DiscoveryError


def discovered_annotations(namings: Sequence[Naming], core: float = CORE):
    """Each discovery's masks (each cluster's ``core`` most typical segments) written to
    ``<folder>/masks.coco.json`` and read back as one
    :class:`~sxai_plugins.data.concepts.AnnotationSet`."""
    from ..data.concepts import AnnotationSet, load_coco

    sets = []
    for naming in namings:
        path, root = write_masks([naming], naming.discovery.folder / MASKS_FILE, core)
        sets.append(load_coco(path, root))
    concepts = tuple(dict.fromkeys(c for s in sets for c in s.concepts))
    return AnnotationSet(
        " + ".join(s.source for s in sets),
        _one_per_image([a for s in sets for a in s.annotations]),
        concepts,
        [p for s in sets for p in s.problems],
    )


def _one_per_image(annotations):
    """Annotations of an image found by several discoveries (one naming its eyes, another its
    nose) merged into one, so the image is one item of the spaces' data (one fold, one original)."""
    from dataclasses import replace

    merged: dict = {}
    for a in annotations:
        key = a.image_path.resolve()
        seen = merged.get(key)
        if seen is None:
            merged[key] = replace(a, concepts=dict(a.concepts))
            continue
        if seen.class_name != a.class_name:
            raise DiscoveryError(
                f"{a.image_path}: discovered as {seen.class_name!r} in one discovery and as "
                f"{a.class_name!r} in another; an image has one class"
            )
        for concept, geometry in a.concepts.items():
            own = seen.concepts.get(concept)
            seen.concepts[concept] = geometry if own is None else own.merged(geometry)
        seen.complete = seen.complete and a.complete
    return list(merged.values())


def discovered_labelled(annotations, natural_negatives: bool = False):
    """The labelled images of discovered annotations; without ``natural_negatives`` a concept
    not found in an image is unknown there, not absent."""
    from ..spaces.probe_data import labelled_from_annotations

    labelled = labelled_from_annotations(annotations)
    if not natural_negatives:
        for item in labelled:
            item.visible = {c: v for c, v in item.visible.items() if v}
    return labelled


def build_discovered_spaces(
    model,
    folders: Sequence[str | Path],
    recipe_options: dict | None = None,
    evaluate: bool = True,
    folds: int = 5,
    natural_negatives: bool = False,
    reference=None,
    progress: bool = True,
    core: float = CORE,
):
    """``(spaces, shared channels, namings)``: one probe space per (discovery class, concept named
    in it), from the named clusters of the discovery ``folders`` (one per class, or several)."""
    from ..spaces.build import shared_channels
    from ..spaces.probe_data import Masking, cached_probe_features
    from ..spaces.probes import build_probe_spaces
    from ..spaces.validity import evaluate_recipes

    if not folders:
        raise DiscoveryError("no discovery folder given (--discovered DISC)")
    namings = [read_naming(folder) for folder in folders]
    for naming in namings:
        d = naming.discovery
        if d.fingerprint != model.fingerprint():
            raise DiscoveryError(
                f"{d.folder}: discovered with {d.backbone} weights {d.fingerprint}, but the model "
                f"is {model.name} with weights {model.fingerprint()}; pass the same --backbone "
                "(and --weights / --head) as sxai discover had"
            )
        if d.class_name not in model.class_names:
            raise DiscoveryError(
                f"{d.folder}: class {d.class_name!r} is not one of the model's classes "
                f"({', '.join(model.class_names)})"
            )
    from ..spaces.from_config import probe_recipe

    recipe, seed = probe_recipe(recipe_options or {})
    by_class: dict[str, list[str]] = {}
    for naming in namings:
        concepts = by_class.setdefault(naming.discovery.class_name, [])
        concepts.extend(c for c in naming.concepts if c not in concepts)
    if not 0 < core <= 1:
        raise DiscoveryError(f"the mask core must be in (0, 1], got {core}")
    annotations = discovered_annotations(namings, core)
    labelled = discovered_labelled(annotations, natural_negatives)
    names = recipe.train_maskings + (recipe.held_out_maskings if evaluate else ())
    maskings = [Masking.parse(m) for m in names]
    bank = cached_probe_features(
        model,
        labelled,
        list(annotations.concepts),
        maskings,
        seed=seed,
        progress=progress,
        layers=recipe.layers,
        framing=recipe.framed_weight > 0,
    )
    spaces = []
    for class_name, concepts in by_class.items():
        built = build_probe_spaces(model, bank, [class_name], concepts, recipe, progress=progress)
        if evaluate:
            results = evaluate_recipes(
                bank,
                [class_name],
                concepts,
                ["probe"],
                recipe,
                folds=folds,
                seed=seed,
                progress=progress,
            )["probe"]
            for space in built:
                space.evaluation = {
                    "protocol": f"out-of-fold on the discovered images, {folds} folds grouped by "
                    f"image, seed {seed}; held-out maskings {', '.join(recipe.held_out_maskings)}",
                    **results[space.key],
                }
        spaces.extend(built)
    for space in spaces:
        sources = [
            n
            for n in namings
            if n.discovery.class_name == space.class_name and space.concept in n.concepts
        ]
        space.recipe["discovered"] = {
            "clusters": [c for n in sources for c in n.concepts[space.concept]],
            # which discovery folder each cluster id belongs to, when several name the concept
            "discoveries": {n.discovery.folder.name: n.concepts[space.concept] for n in sources},
            "images": len(
                {
                    n.discovery.image_path(i).resolve()
                    for n in sources
                    for i in range(len(n.discovery.images))
                }
            ),
            "natural_negatives": natural_negatives,
            "core": core,
        }
    if reference is not None:
        _paths, traits, logits = reference
        for space in spaces:
            own = traits[logits.argmax(1) == model.class_names.index(space.class_name)]
            if len(own) >= 3:
                space.with_reference(space.activation(own))
    return spaces, shared_channels(spaces), namings


__all__ = [
    "build_discovered_spaces",
    "discovered_annotations",
    "discovered_labelled",
]
