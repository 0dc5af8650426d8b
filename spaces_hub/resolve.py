"""One way for every command to take spaces: local files, folders, or ``hf://owner/name[@revision]``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sxai_plugins.spaces.space import SemanticSpace, load_spaces

from .errors import HubError

HF_PREFIX = "hf://"


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf://owner/name@rev`` -> ``("owner/name", "rev")``; the revision is optional."""
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    try:
        uri = parse_hf_uri(source)
    except HfUriError as exc:
        raise HubError(
            f"{source}: not a Hub space set ({' '.join(str(exc).split())}); "
            "write hf://owner/name or hf://owner/name@revision"
        ) from exc
    if uri.type != "model" or uri.path_in_repo:
        raise HubError(
            f"{source}: spaces live at the root of a model repository; "
            "write hf://owner/name or hf://owner/name@revision"
        )
    return uri.id, uri.revision


def resolve_spaces(
    sources: Sequence[str | Path], model: Any = None, force: bool = False, **pull_kwargs: Any
) -> list[SemanticSpace]:
    """Load spaces from each source in order: a ``.safetensors`` file, a folder of them, or ``hf://...``.

    Hub sources are pulled with :func:`spaces_hub.pull` (cache, tokens and ``HF_HUB_OFFLINE`` as
    huggingface_hub handles them; ``pull_kwargs`` such as ``cache_dir`` or ``token`` are passed
    on). With ``model``, every space, local or not, must fit its backbone unless ``force``.
    """
    from .client import pull

    if isinstance(sources, (str, Path)):
        sources = [sources]
    spaces: list[SemanticSpace] = []
    for source in sources:
        if isinstance(source, str) and source.startswith(HF_PREFIX):
            repo_id, revision = parse_hub_source(source)
            spaces.extend(pull(repo_id, revision=revision, model=model, force=force, **pull_kwargs))
        else:
            local = load_spaces([source])
            if model is not None:
                for space in local:
                    space.check_compatible(model, force=force)
            spaces.extend(local)
    return spaces
