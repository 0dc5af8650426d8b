"""Plugin discovery and the registries built from it.

``get_plugin_manager()`` registers the core's built-in plugins, then every entry point of the
``sxai`` group. A plugin that fails to import or register is reported (a warning naming the entry
point and the error) and skipped; the others keep working.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from .._utils.errors import BackboneNotFoundError, PluginError, PluginNotFoundError
from . import hookspecs
from .hookspecs import BackboneSpec, ExplanationTemplate, FeatureInverter, Masker

if TYPE_CHECKING:  # pragma: no cover
    pass

ENTRY_POINT_GROUP = "sxai"
CORE_DISTRIBUTION = "sxai"

# Backbones provided by first-party plugin distributions: asking for one of these while its plugin
# is absent must name the package rather than fall through to the generic timm adapter (timm's VGG
# has an MLP pre-logits head, not the paper's GAP head).
FIRST_PARTY_BACKBONES = {
    "vgg16": ("sxai-plugins-vgg", "./sxai_plugins_vgg"),
    "vgg19": ("sxai-plugins-vgg", "./sxai_plugins_vgg"),
    "vgg19_bn": ("sxai-plugins-vgg", "./sxai_plugins_vgg"),
    "alexnet": ("sxai-plugins-alexnet", "./sxai_plugins_alexnet"),
}

# What the core's pyproject.toml declares in the entry-point group, for a source tree that was
# never pip-installed.
BUILTIN_PLUGINS = (
    "sxai_plugins.models.timm_generic",
    "sxai_plugins.models.lite0",
    "sxai_plugins.explain.templates",
    "sxai_plugins.viz.inverters",
    "sxai_plugins.spaces.maskers",
    "sxai_plugins.cli.commands",
    "spaces_hub.plugin",
)


@dataclass
class PluginFailure:
    name: str
    error: str


@dataclass
class _State:
    manager: pluggy.PluginManager | None = None
    failures: list[PluginFailure] = field(default_factory=list)


_state = _State()


def _new_manager() -> tuple[pluggy.PluginManager, list[PluginFailure]]:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    failures: list[PluginFailure] = []
    # The core first: pluggy calls later-registered plugins first, so a third-party plugin that
    # provides a name the core also provides wins.
    entry_points = sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.dist is None or ep.dist.name != CORE_DISTRIBUTION, ep.name),
    )
    per_dist: dict[str, int] = {}
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else ep.name
        per_dist[dist] = per_dist.get(dist, 0) + 1
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else ep.name
        label = dist if per_dist[dist] == 1 else f"{dist}:{ep.name}"
        if pm.get_plugin(label) is not None or any(
            p is not None and getattr(p, "__name__", None) == ep.value for p in pm.get_plugins()
        ):
            continue  # the same module reached twice (e.g. an editable and a regular install)
        try:
            pm.register(ep.load(), name=label)
        except Exception as exc:  # a broken plugin must not take the engine down
            failures.append(PluginFailure(label, f"{type(exc).__name__}: {exc}"))
            warnings.warn(
                f"sxai plugin {label!r} ({ep.value}) failed to load and is skipped: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=3,
            )
    # Running from a source tree that was never pip-installed: no entry points for the core, so
    # register its own plugins directly (what its pyproject.toml declares).
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, name=f"sxai-source-tree:{module_name.rsplit('.', 1)[-1]}")
    while True:  # an installed plugin that breaks the contract is reported and skipped, as above
        try:
            _check_hooks(pm)
            break
        except PluginError as exc:
            failures.append(PluginFailure(exc.plugin_name, str(exc)))
            pm.unregister(name=exc.plugin_name)
            warnings.warn(f"{exc}; the plugin is skipped", RuntimeWarning, stacklevel=3)
    return pm, failures


def _check_hooks(pm: pluggy.PluginManager) -> None:
    """Refuse a plugin that implements a hook no spec declares: a misspelled ``sxai_backbone``
    would otherwise be accepted silently and never called."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        hooks = sorted(n for n in dir(hookspecs) if n.startswith("sxai_"))
        unknown = re.search(r"unknown hook '(\w+)'", str(exc))
        close = difflib.get_close_matches(unknown.group(1), hooks, n=1) if unknown else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        error = PluginError(
            f"sxai plugin {name!r}: {exc}{hint}; the hooks sxai defines are {', '.join(hooks)}"
        )
        error.plugin_name = name
        raise error from exc


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, created on first use."""
    if _state.manager is None:
        _state.manager, _state.failures = _new_manager()
    return _state.manager


def reload_plugins() -> pluggy.PluginManager:
    """Forget the current plugin manager and discover plugins again (after a pip install)."""
    _state.manager = None
    return get_plugin_manager()


def plugin_failures() -> list[PluginFailure]:
    get_plugin_manager()
    return list(_state.failures)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object at run time (e.g. a module of your own, without packaging it).

    A hook implementation whose name no spec declares is refused with :class:`PluginError`, and
    the plugin is not kept.
    """
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        _check_hooks(pm)
    except PluginError:
        pm.unregister(plugin)
        raise


def _provided(hook_name: str) -> Iterator[tuple[str, Any]]:
    """(plugin name, item) for every item of a provider hook, later-registered plugins first.

    Each plugin's implementation is called through pluggy (a subset caller holding just that
    plugin), so hook wrappers and call ordering apply as for any hook call, and every item keeps
    the name of the plugin that provided it.
    """
    pm = get_plugin_manager()
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    for impl in reversed(impls):
        others = [other.plugin for other in impls if other.plugin is not impl.plugin]
        for items in pm.subset_hook_caller(hook_name, remove_plugins=others)():
            for item in items or ():
                yield impl.plugin_name, item


def backbone_table() -> dict[str, tuple[str, BackboneSpec]]:
    """name -> (plugin name, spec) for every backbone listed by an installed plugin."""
    table: dict[str, tuple[str, BackboneSpec]] = {}
    for plugin_name, spec in _provided("sxai_backbones"):
        table.setdefault(spec.name, (plugin_name, spec))
    return table


def get_backbone_spec(name: str) -> BackboneSpec:
    table = backbone_table()
    if name in table:
        return table[name][1]
    if name in FIRST_PARTY_BACKBONES:
        dist, path = FIRST_PARTY_BACKBONES[name]
        raise PluginNotFoundError(
            f"backbone {name!r} is provided by the plugin package {dist!r}, which is not installed "
            f"(and not published on PyPI yet); install it from a checkout of the sxai source tree: "
            f"`pip install {path}`"
        )
    spec = get_plugin_manager().hook.sxai_resolve_backbone(name=name)
    if spec is None:
        raise BackboneNotFoundError(
            f"unknown backbone {name!r}; installed backbones: {', '.join(sorted(table))}; "
            "any timm CNN name (e.g. resnet50, efficientnet_b0) also works"
        )
    return spec


def _named(hook_name: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for _plugin, item in _provided(hook_name):
        found.setdefault(item.name, item)
    return found


def maskers() -> dict[str, Masker]:
    return _named("sxai_maskers")


def feature_inverters() -> dict[str, FeatureInverter]:
    return _named("sxai_feature_inverters")


def explanation_templates() -> dict[str, ExplanationTemplate]:
    return _named("sxai_explanation_templates")


def _get(table: dict[str, Any], name: str, kind: str) -> Any:
    if name not in table:
        raise PluginNotFoundError(
            f"no {kind} named {name!r}; installed: {', '.join(sorted(table)) or 'none'}"
        )
    return table[name]


def get_masker(name: str) -> Masker:
    return _get(maskers(), name, "masker")


def get_feature_inverter(name: str) -> FeatureInverter:
    return _get(feature_inverters(), name, "feature inverter")


def get_explanation_template(name: str) -> ExplanationTemplate:
    return _get(explanation_templates(), name, "explanation template")
