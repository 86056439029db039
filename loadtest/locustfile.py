"""Locust users for the soak test: text, audio and text+audio predictions plus health checks.

Run by ``python -m loadtest.run`` (``make loadtest``), which starts the service on
127.0.0.1 and passes ``--host``. Every response is also counted per second and
status code into ``$LOADTEST_TIMELINE`` (CSV), because Locust's own CSVs report
failures but not a status histogram over time.
"""

from __future__ import annotations

import base64
import collections
import csv
import io
import math
import os
import time

import numpy as np
import soundfile as sf
from locust import HttpUser, between, events, task

API_KEY = os.environ.get("SENTIMENT_API_KEY", "")
HEADERS = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
TEXTS = [
    "An absolute delight from start to finish.",
    "Dull, overlong and badly acted.",
    "It was fine, I suppose, though the ending dragged.",
    "I have rarely been this bored in a cinema.",
]


def _clip(seconds: float, freq: float, rate: int = 16_000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


CLIPS = [_clip(1.0, 220.0), _clip(2.5, 330.0)]
CLIPS_B64 = [base64.b64encode(c).decode() for c in CLIPS]


class SentimentUser(HttpUser):
    wait_time = between(0.05, 0.25)

    def _predict(self, name: str, **kwargs) -> None:
        # 503 (overload, Retry-After) is an expected answer under a soak: counted, not failed.
        with self.client.post("/v1/predict", name=name, headers=HEADERS, catch_response=True, **kwargs) as r:
            if r.status_code in (200, 503):
                r.success()
            else:
                r.failure(f"HTTP {r.status_code}")

    @task(4)
    def text_only(self) -> None:
        self._predict("predict text", json={"text": TEXTS[int(time.time() * 1000) % len(TEXTS)]})

    @task(2)
    def text_and_audio(self) -> None:
        i = int(time.time() * 1000) % len(CLIPS_B64)
        self._predict("predict text+audio", json={"text": TEXTS[i], "audio": CLIPS_B64[i]})

    @task(1)
    def audio_multipart(self) -> None:
        self._predict("predict audio (multipart)", files={"audio": ("clip.wav", CLIPS[0], "audio/wav")})

    @task(1)
    def health(self) -> None:
        self.client.get("/healthz", name="healthz")


# ---- per-second status histogram and latency -----------------------------------------

_buckets: dict[int, dict] = collections.defaultdict(lambda: {"statuses": collections.Counter(), "latencies": []})
_t0 = time.time()


@events.request.add_listener
def _record(request_type, name, response_time, response_length, response=None, exception=None, **kwargs):
    second = int(time.time() - _t0)
    status = getattr(response, "status_code", 0) if exception is None or response is not None else 0
    bucket = _buckets[second]
    bucket["statuses"][status] += 1
    if name != "healthz":
        bucket["latencies"].append(response_time)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


@events.quitting.add_listener
def _write_timeline(environment, **kwargs) -> None:
    path = os.environ.get("LOADTEST_TIMELINE")
    if not path:
        return
    statuses = sorted({s for b in _buckets.values() for s in b["statuses"]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["second", "requests", *[f"status_{s}" for s in statuses], "p50_ms", "p95_ms", "max_ms"])
        for second in sorted(_buckets):
            b = _buckets[second]
            lat = b["latencies"]
            writer.writerow([second, sum(b["statuses"].values()), *[b["statuses"].get(s, 0) for s in statuses],
                             round(_percentile(lat, 0.5), 1), round(_percentile(lat, 0.95), 1),
                             round(max(lat), 1) if lat else ""])
