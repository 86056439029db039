"""Copy a model bundle from object storage (or any path) into a local folder, then check it.

    python -m cluster.fetch_bundle s3://my-bucket/bundles/sentiment-v2 /models/sentiment-v2
    python -m cluster.fetch_bundle gs://my-bucket/bundles/sentiment-v2 /models/sentiment-v2

Uses pyarrow's filesystems (already a pinned dependency), so s3://, gs://, hdfs:// and
local paths work without another client. Credentials come from the environment the usual
way (AWS_* variables, an IAM role / workload identity, GOOGLE_APPLICATION_CREDENTIALS),
never from the image.

The copy lands in a temporary sibling folder and is renamed into place only after
``Bundle.load`` accepts it, so readers never see half a bundle.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pyarrow import fs

from model.bundle import Bundle
from model.errors import BundleError


def fetch_bundle(source: str, dest: str | Path, overwrite: bool = False) -> Bundle:
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass --overwrite to replace it")
    filesystem, path = fs.FileSystem.from_uri(source if "://" in source else str(Path(source).resolve()))
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.Directory:
        raise FileNotFoundError(f"{source} is not a folder")
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fs.copy_files(path, str(staging), source_filesystem=filesystem,
                  destination_filesystem=fs.LocalFileSystem())
    try:
        Bundle.load(staging)
    except BundleError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)
    return Bundle.load(dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.fetch_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="s3://bucket/prefix, gs://bucket/prefix, hdfs://... or a local folder")
    parser.add_argument("dest", help="local folder to create, e.g. /models/sentiment-v2")
    parser.add_argument("--overwrite", action="store_true", help="replace dest if it exists")
    args = parser.parse_args(argv)
    try:
        bundle = fetch_bundle(args.source, args.dest, args.overwrite)
    except (BundleError, FileExistsError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dest}: bundle {bundle.name} v{bundle.version} (trained={bundle.trained})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
