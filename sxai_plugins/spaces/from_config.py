"""Semantic spaces from a build configuration (what ``sxai space`` reads from its TOML and flags):
the probe recipe or a v1 recipe, the out-of-fold evaluation, the reference fits and the plots."""

from __future__ import annotations

from pathlib import Path

from .._utils.errors import SxaiError


def build_from_config(
    model,
    annotations,
    config: dict,
    classes,
    concepts,
    reference,
    progress: bool = True,
    extractor=None,
):
    """``(spaces, shared channels)`` for ``config["recipe"]`` (probe, tuned or paper).
    ``extractor``: how the probe recipe's masked/unmasked features are extracted (see
    :func:`~sxai_plugins.spaces.probe_data.cached_probe_features`)."""
    if config.get("recipe", "probe") == "probe":
        return _build_probes(
            model, annotations, config, classes, concepts, reference, progress, extractor
        )
    if extractor is not None:
        raise SxaiError(
            f"--engine ray extracts features for the probe recipe only; the {config['recipe']} "
            "recipe runs locally (drop --engine ray)"
        )
    return _build_v1(
        model, annotations, config, classes, concepts, reference, config["recipe"], progress
    )


def probe_recipe(recipe_options: dict):
    """``(ProbeRecipe, seed)`` from the ``[recipe_options]`` of a build config (lists as tuples)."""
    from .probes import ProbeRecipe

    options = dict(recipe_options)
    seed = int(options.pop("seed", 0))
    for key in ("masker", "region"):
        if key in options:
            raise SxaiError(
                f"--{key} belongs to the paper and tuned recipes; the probe recipe masks "
                "with its train_maskings (recipe_options in the config)"
            )
    for key in ("train_maskings", "held_out_maskings", "cs", "layers"):
        if key in options:
            options[key] = tuple(options[key])
    try:
        recipe = ProbeRecipe(**options)
    except TypeError as exc:
        raise SxaiError(
            f"unknown probe recipe option ({exc}); see sxai_plugins.spaces.probes.ProbeRecipe"
        ) from exc
    return recipe, seed


def _build_probes(
    model, annotations, config, classes, concepts, reference, progress, extractor=None
):
    from .build import shared_channels
    from .probe_data import Masking, cached_probe_features, load_labelled
    from .probes import build_probe_spaces
    from .validity import evaluate_recipes

    recipe, seed = probe_recipe(config["recipe_options"])
    labelled = load_labelled(annotations, config.get("visibility"), config.get("image_root"))
    maskings = [Masking.parse(m) for m in recipe.train_maskings + recipe.held_out_maskings]
    try:
        bank = cached_probe_features(
            model,
            labelled,
            concepts,
            maskings,
            seed=seed,
            progress=progress,
            layers=recipe.layers,
            extractor=extractor,
            framing=recipe.framed_weight > 0,
        )
    except ValueError as exc:  # a layer the model's body does not have
        raise SxaiError(f"recipe_options.layers: {exc}") from exc
    spaces = build_probe_spaces(model, bank, classes, concepts, recipe, progress=progress)
    if config.get("evaluate", True):
        folds = int(config.get("folds", 5))
        results = evaluate_recipes(
            bank, classes, concepts, ["probe"], recipe, folds=folds, seed=seed, progress=progress
        )["probe"]
        for space in spaces:
            space.evaluation = {
                "protocol": f"out-of-fold, {folds} folds grouped by image, seed {seed}; "
                f"held-out maskings {', '.join(recipe.held_out_maskings)}",
                **results[space.key],
            }
    if reference is not None:
        _paths, traits, logits = reference
        for space in spaces:
            own = traits[logits.argmax(1) == model.class_names.index(space.class_name)]
            if len(own) >= 3:
                space.with_reference(space.activation(own))
    return spaces, shared_channels(spaces)


def _build_v1(model, annotations, config, classes, concepts, reference, mode, progress):
    from .build import SpaceRecipe, build_spaces

    options = dict(config["recipe_options"])
    recipe = SpaceRecipe.paper(**options) if mode == "paper" else SpaceRecipe.tuned(**options)
    _paths, traits, logits = reference
    report = build_spaces(
        model, annotations, classes, concepts, (traits, logits), recipe, progress=progress
    )
    return report.spaces, report.shared_channels


def write_plots(
    model,
    spaces,
    config: dict,
    reference,
    folder: Path,
    contact_sheets: bool = True,
    progress: bool = True,
) -> None:
    """Distribution plots, extreme-image contact sheets and inversions of the spaces into ``folder``."""
    from ..viz.plots import distribution_plot, extreme_sheets

    if reference is not None:
        paths, traits, logits = reference
        predicted = logits.argmax(1)
        for space in spaces:
            if space.reference is None:
                continue
            keep = predicted == model.class_names.index(space.class_name)
            own = traits[keep]
            distribution_plot(
                space,
                space.activation(own).detach().numpy(),
                folder / f"{space.key}.distribution.png",
            )
            if config.get("contact_sheets", True) and contact_sheets:
                own_paths = [p for p, k in zip(paths, keep.tolist()) if k]
                extreme_sheets(space, own_paths, space.probability(own).numpy(), folder)
    if config.get("invert", "none") != "none":
        from ..viz.space_inversion import invert_spaces

        invert_spaces(
            model,
            spaces,
            folder,
            config["invert"],
            config.get("inversion_steps"),
            progress=progress,
        )
