"""The jobs' command line: ``python -m jobs score|features`` and the two console scripts.

    python -m jobs score    --manifest M --bundle B --out predictions.parquet
    python -m jobs features --manifest M --bundle B --out features.parquet

(``sentiment-score`` and ``sentiment-features`` are the same two commands.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict

from jobs.run import BatchResources, run, service_limits

MODES = {"score": "labels, scores and errors per row",
         "features": "encoder features per row, e.g. to fill a training feature cache"}


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="JSONL or CSV: id,text,audio_path[,split,label,score]")
    p.add_argument("--bundle", required=True, help="model bundle folder (visible to every node)")
    p.add_argument("--out", required=True, help="output folder of Parquet shards; rerun to resume")
    p.add_argument("--address", default=None,
                   help="Ray cluster address; default: RAY_ADDRESS, else a running local cluster, else a new one. "
                        "'local' always starts a new one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="GPU actors when the cluster has GPUs (auto), or force one")
    p.add_argument("--max-actors", type=int, default=4, help="upper bound of each encoder/fusion actor pool")
    p.add_argument("--actor-cpus", type=float, default=None,
                   help="CPUs per actor; torch threads follow it (default: a quarter of the cluster's, 0.25-2)")
    p.add_argument("--decode-cpus", type=float, default=None, help="CPUs per audio decoding task (default: as actors)")
    p.add_argument("--shard-rows", type=int, default=1000, help="rows per output shard")
    p.add_argument("--limit", type=int, default=None, help="only the first N manifest rows (a trial run)")
    p.add_argument("--serve-config", default=None,
                   help="take the request limits from this Serve config (default: the project's serve_config.yaml)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs",
                                     description="Distributed batch scoring and feature extraction with Ray Data.")
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode, help_text in MODES.items():
        _add_options(sub.add_parser(mode, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    import ray

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    resources = BatchResources(gpu={"auto": None, "cpu": False, "gpu": True}[args.device],
                               max_actors=args.max_actors, actor_cpus=args.actor_cpus, decode_cpus=args.decode_cpus)
    if not ray.is_initialized():
        ray.init(address=args.address, num_cpus=args.num_cpus, log_to_driver=False)
    stats = run(args.mode, args.manifest, args.bundle, args.out, resources, service_limits(args.serve_config),
                shard_rows=args.shard_rows, limit=args.limit, progress=not args.no_progress)
    print(json.dumps(asdict(stats)))
    return 0


def score_main(argv: list[str] | None = None) -> int:
    """``sentiment-score ...`` = ``python -m jobs score ...``."""
    return main(["score", *(sys.argv[1:] if argv is None else argv)])


def features_main(argv: list[str] | None = None) -> int:
    """``sentiment-features ...`` = ``python -m jobs features ...``."""
    return main(["features", *(sys.argv[1:] if argv is None else argv)])
