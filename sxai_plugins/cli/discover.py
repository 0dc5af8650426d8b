"""``sxai discover``: concepts of a class found without annotation (clusters of image segments),
with contact sheets, an HTML page and a naming file to fill in."""

from __future__ import annotations

import argparse

from ._args import add_model_args, model_from_args, positive_int, positive_list


def _discover(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="discover concepts of a class without annotation",
        description="Segment N images of a class at several SLIC scales, embed every segment "
        "with the model, cluster the segments (k-means, k by silhouette), drop clusters that are "
        "background or appear in few images, rank the rest by how much removing them lowers the "
        "class score, and write OUT/clusters/<id>.png (a contact sheet per cluster), "
        "OUT/index.html, OUT/discovery.json, OUT/segments.npz and OUT/concepts.toml (OUT is "
        'replaced whole). Name clusters in concepts.toml (c3 = "eyes"), then build spaces with '
        "sxai space --discovered OUT --out SPACES.",
    )
    p.add_argument("--data", help="ImageFolder root (DATA/<class>/) or a folder")
    p.add_argument("--class", dest="class_name", help="a class of the model")
    p.add_argument(
        "--zoom",
        metavar="DISC:IDS",
        help="discover inside an earlier discovery instead of --data: each of its images "
        "cropped to a square around the clusters IDS (e.g. disc-cat:c4,c5,c6, the face), so that "
        "parts too small for a segment of their own in the whole image get one; masks of named "
        "clusters are put back into the whole image",
    )
    p.add_argument(
        "--zoom-margin",
        type=float,
        default=0.25,
        help="with --zoom: widen each square by this share of its side on every side "
        "(default 0.25)",
    )
    p.add_argument(
        "--zoom-around",
        choices=("all", "typical"),
        default="all",
        help="with --zoom: the square holds all of the clusters' segments in the image (all, "
        "default) or only its most typical one (typical: a tight crop around one part)",
    )
    p.add_argument("--out", "-o", required=True, help="discovery folder to write")
    p.add_argument("--n", type=positive_int, default=200, help="images drawn (seeded; default 200)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="FILE",
        help="leave out the images a file names (a COCO file, a JSON object keyed by image "
        "path, or a text file of paths; relative to the file's folder) or an earlier discovery "
        "drew (its folder); repeatable",
    )
    p.add_argument(
        "--embedding",
        choices=("pooled", "crop"),
        default="pooled",
        help="pooled (default): the last conv map averaged over each segment, one pass per "
        "image; crop: one pass per segment, alone on grey",
    )
    p.add_argument(
        "--pool-size",
        type=positive_int,
        default=448,
        help="pooled: the side each image is fed at (default 448; 672 gives a finer map for "
        "small parts such as eyes, each forward pass costing about 2.25 times as much)",
    )
    p.add_argument(
        "--scales", type=positive_list(int), default=[25, 60, 120], help="SLIC segment counts"
    )
    p.add_argument(
        "--k",
        type=positive_list(int),
        default=[12, 16, 20],
        help="cluster counts to try; the best silhouette wins",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the clusters as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_model_args(p)
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .._utils.io import check_output_folder, dumps_json
    from ..discover.run import DiscoverConfig, DiscoveryError, discover

    check_output_folder(args.out)
    zoom = None
    if args.zoom and args.data:
        raise DiscoveryError(
            "--zoom takes its images from the discovery it names; leave out --data"
        )
    if args.zoom:
        from ..discover.run import load_discovery
        from ..discover.zoom import parse_zoom, zoom_into

        parent, clusters = parse_zoom(args.zoom)
        zoom = zoom_into(parent, clusters, args.zoom_margin, around=args.zoom_around)
        parent_class = load_discovery(parent).class_name
        if args.class_name not in (None, parent_class):
            raise DiscoveryError(
                f"--class {args.class_name} but --zoom {parent} discovered {parent_class}; "
                "leave out --class (a zoom keeps its discovery's class)"
            )
        args.class_name = parent_class
    elif not (args.data and args.class_name):
        raise DiscoveryError(
            "give --data DIR and --class NAME (or --zoom DISC:IDS to look inside a discovery)"
        )
    config = DiscoverConfig(
        n=args.n,
        scales=tuple(args.scales),
        embedding=args.embedding,
        pool_size=args.pool_size,
        ks=tuple(args.k),
        seed=args.seed,
    )
    model = model_from_args(args)
    result = discover(
        model,
        args.data,
        args.class_name,
        args.out,
        config,
        exclude=args.exclude,
        progress=not (args.quiet or args.json),
        zoom=zoom,
    )
    if args.json:
        print(dumps_json(result.to_json()))
        return 0
    n = len(result.images)
    print(
        f"{n} images of {result.class_name}, {result.n_segments} segments, k = {result.k} "
        f"({sum(result.timings.values()):.0f} s)"
    )
    print(f"{'cluster':<8}{'status':<11}{'rank':>5}{'images':>9}{'drop':>8}{'evidence z':>12}")
    for cid, s in result.clusters.items():
        drop = "" if s.rank is None else f"{s.drop:.2f}"
        print(
            f"{cid:<8}{s.status:<11}{s.rank or '':>5}{f'{s.n_images}/{n}':>9}{drop:>8}"
            f"{s.evidence_z:>12.2f}"
        )
    print(
        f"wrote {args.out}: look at {args.out}/index.html, name clusters in "
        f"{args.out}/concepts.toml, then: sxai space --discovered {args.out} --out SPACES"
    )
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    _discover(subparsers)
