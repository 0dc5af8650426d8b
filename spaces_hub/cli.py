"""``sxai hub push|pull``: share semantic spaces on the Hugging Face Hub (see ``spaces_hub``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sxai_plugins._utils.errors import SxaiError
from sxai_plugins._utils.io import dumps_json


def add_hub_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hub",
        help="push semantic spaces to, or pull them from, the Hugging Face Hub",
        description="Share semantic spaces through a Hub model repository: spaces.json (index with "
        "sha256 of every file), README.md (model card) and spaces/<class>.<concept>.safetensors. "
        "HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE and HF_HUB_OFFLINE=1 work as for any Hub download. "
        "Any command that takes spaces also accepts hf://owner/name[@revision].",
    )
    hub_sub = p.add_subparsers(dest="hub_command", metavar="ACTION")
    hub_sub.required = True

    push = hub_sub.add_parser(
        "push",
        help="upload a space set in one commit",
        description="Upload the spaces (files, folders of .safetensors, or hf:// sources) with their index "
        "and model card in one commit; creates the repository and branch if needed. Prints the "
        'commit URL (with --json: {"repo", "revision", "commit", "url", "spaces"}).',
    )
    push.add_argument(
        "spaces", nargs="+", help="space files, folders of them, or hf://owner/name[@rev]"
    )
    push.add_argument("--repo", "-r", required=True, help="owner/name of the Hub repository")
    push.add_argument("--revision", help="branch to commit to (created if missing; default main)")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--message", "-m", default=None, help="commit message")
    push.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="FILE[=PATH_IN_REPO]",
        help="another file to upload, e.g. a plot (repeatable); never read back by pull",
    )
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    push.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    push.set_defaults(handler=_run_push)

    pull = hub_sub.add_parser(
        "pull",
        help="download and verify a space set",
        description="Download spaces.json and the space files it lists into the Hub cache, verify every "
        "file (sha256, size, safetensors header) and list the spaces (with --json: a list of "
        '{"key", "class_name", "concept", "n_ssn", "backbone", "fingerprint"}). '
        "With --backbone, spaces built on other weights are refused unless --force.",
    )
    pull.add_argument("repo", help="owner/name or hf://owner/name[@revision]")
    pull.add_argument("--revision", help="branch, tag or commit (default main, or the @revision)")
    pull.add_argument("--cache-dir", help="Hub cache folder (default HF_HUB_CACHE)")
    pull.add_argument(
        "--out",
        "-o",
        help="also write the spaces into this folder as <class>.<concept>.safetensors",
    )
    pull.add_argument("--backbone", "-b", help="check the spaces against this backbone's weights")
    pull.add_argument("--weights", help="local backbone weights for --backbone")
    pull.add_argument("--force", action="store_true", help="accept spaces built on other weights")
    pull.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    pull.add_argument("--json", action="store_true", help="machine-readable output (see above)")
    pull.set_defaults(handler=_run_pull)


def _extras(values: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        local, _, in_repo = value.partition("=")
        out[in_repo or Path(local).name] = Path(local)
    return out


def _run_push(args: argparse.Namespace) -> int:
    from .client import DEFAULT_COMMIT_MESSAGE, push
    from .resolve import resolve_spaces

    spaces = resolve_spaces(args.spaces, token=args.token)
    info = push(
        spaces,
        args.repo,
        revision=args.revision,
        token=args.token,
        private=args.private,
        commit_message=args.message or DEFAULT_COMMIT_MESSAGE,
        extra_files=_extras(args.extra),
    )
    if args.json:
        print(
            dumps_json(
                {
                    "repo": args.repo,
                    "revision": args.revision or "main",
                    "commit": info.oid,
                    "url": info.commit_url,
                    "spaces": [s.key for s in spaces],
                }
            )
        )
    else:
        print(f"pushed {len(spaces)} spaces to {args.repo}: {info.commit_url}")
    return 0


def _run_pull(args: argparse.Namespace) -> int:
    from . import resolve
    from .client import pull
    from .layout import save_spaces
    from .resolve import parse_hub_source

    repo, revision = args.repo, args.revision
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise SxaiError(
            f"--out {args.out}: exists and is not a folder; pass a folder for the space files"
        )
    if repo.startswith(resolve.HF_PREFIX):
        repo, from_uri = parse_hub_source(repo)
        revision = revision or from_uri
    model = None
    if args.backbone:
        from sxai_plugins import create_model

        model = create_model(args.backbone, pretrained=True, weights=args.weights)
    spaces = pull(
        repo,
        revision=revision,
        token=args.token,
        cache_dir=args.cache_dir,
        model=model,
        force=args.force,
        progress=not args.json,
    )
    if args.out:
        save_spaces(spaces, args.out)
    records = [
        {
            "key": s.key,
            "class_name": s.class_name,
            "concept": s.concept,
            "n_ssn": s.n_ssn,
            "backbone": s.backbone,
            "fingerprint": s.fingerprint,
        }
        for s in spaces
    ]
    if args.json:
        print(dumps_json(records))
    else:
        for r in records:
            print(f"{r['key']}: {r['n_ssn']} SSNs on {r['backbone']} ({r['fingerprint']})")
        if args.out:
            print(f"wrote {len(spaces)} spaces to {args.out}")
    return 0
