"""Faults and overload on a real local Ray: replicas killed under load, a poisoned
model replaced by its health check, a burst far above capacity, and bundles that
cannot load. (Clients that hang up: tests/test_operations.py.)

Every figure a test measures is printed (run with ``-s``) so the README's
numbers come from these runs.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import shutil
import threading
import time
from datetime import datetime

import httpx
import pytest

from deployments.replica import FAULT_INJECTION_ENV
from tests.conftest import apply_config, deploy_config, serve_log_dir, tone, wait_healthy

# Kills and bursts, timed to the second: nothing else may load the machine meanwhile.
pytestmark = [pytest.mark.slow, pytest.mark.destructive]

APP, PREFIX = "reliability", "/rel"
CONCURRENCY = 8
# The target: requests succeed again within 30 s of a kill.
RECOVERY_LIMIT_S = 30.0
# Starting a replacement replica is a new Python process importing torch: ~10 s on an
# idle 2-core machine, but 33 s was seen with other test suites loading it (load
# average > 20). The replacement is bounded more loosely than service recovery.
REPLACEMENT_LIMIT_S = 60.0
# A model replica's kill is watched for at least this long, and for this long after its
# replacement has started (the Driver's kill, for the fixed window of the 1 %).
MODEL_KILL_WINDOW_S = 12.0
REPLACED_SERVES_S = 3.0


def _options(num_cpus: float = 0.1, env: dict | None = None, **extra) -> dict:
    # Two replicas of each deployment: a killed one is replaced while another serves.
    # Health checks every second so a poisoned replica is found fast. Options dicts
    # replace the code's, so num_cpus is repeated; the small logical-CPU shares let
    # eight replicas schedule beside the other test modules' apps.
    actor = {"num_cpus": num_cpus} | ({"runtime_env": {"env_vars": env}} if env else {})
    return {"num_replicas": 2, "health_check_period_s": 1, "health_check_timeout_s": 10,
            "max_ongoing_requests": 16, "max_queued_requests": 16, "ray_actor_options": actor, **extra}


REQUEST_TIMEOUT_S = 30
# The UI on, as in serve_config.yaml: killing a Driver replica must not take it down.
SETTINGS = {"ui": True, "request_timeout_s": REQUEST_TIMEOUT_S, "retries": 2}
DEPLOYMENTS = {
    # Two, as serve_config.yaml's minimum. With one left after the kill, HAProxy waits
    # min(timeout connect, 1 s) before resending a refused connection (back_handle_st_cer):
    # that delays the one request that found the dead replica, not the others.
    "Driver": _options(),
    # A wide batch window keeps requests waiting inside the replica, so a kill
    # always catches some in flight (exercising the driver's retry).
    "TextEncoder": _options(env={FAULT_INJECTION_ENV: "1"},
                            user_config={"max_batch_size": 64, "batch_wait_timeout_s": 0.2}),
    "AudioEncoder": _options(),
    "FusionHead": _options(),
}


def app_config(bundle, audio_encoders: int = 2) -> dict:
    """This module's app as serve_config.yaml describes one, deployed as ``serve deploy``
    does: the last test scales it to one AudioEncoder in place, without a second app."""
    return {"name": APP, "route_prefix": PREFIX, "import_path": "deployments.app:build_app",
            "args": {"bundle": str(bundle), "settings": SETTINGS},
            "deployments": [{"name": name, **options,
                             "num_replicas": audio_encoders if name == "AudioEncoder" else options["num_replicas"]}
                            for name, options in DEPLOYMENTS.items()]}


@pytest.fixture(scope="module")
def app_url(ray_cluster, tiny_bundle):
    from ray import serve

    url = deploy_config(ray_cluster, app_config(tiny_bundle))
    yield url
    serve.delete(APP)


@pytest.fixture(scope="module")
def body() -> dict:
    from model.audio import encode_wav

    return {"text": "a calm and steady review", "audio": base64.b64encode(encode_wav(tone(0.5, 16_000), 16_000)).decode()}


# ---- helpers -----------------------------------------------------------------


class Load:
    """``concurrency`` clients posting back to back from a background thread."""

    def __init__(self, url: str, body: dict, concurrency: int = CONCURRENCY, timeout_s: float = 60.0):
        self.url, self.body, self.concurrency, self.timeout_s = url, body, concurrency, timeout_s
        self.records: list[tuple[float, float, int]] = []  # (start, end, status); 0 = no HTTP answer
        self._stop = threading.Event()

    def __enter__(self) -> "Load":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 10)

    async def _client(self, client: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                status = (await client.post(self.url, json=self.body)).status_code
            except httpx.HTTPError:
                status = 0
            self.records.append((start, time.monotonic(), status))

    async def _main(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            await asyncio.gather(*(self._client(client) for _ in range(self.concurrency)))

    def histogram(self) -> dict[int, int]:
        return dict(sorted(collections.Counter(status for _, _, status in self.records).items()))


def replica_actors(deployment: str, app: str = APP) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def started(replica_id: str) -> bool:
    """Whether the Serve controller has logged this replica as started (constructor done)."""
    needle = f"Replica(id='{replica_id}', deployment="
    return any(needle in line and "started successfully" in line
               for path in serve_log_dir().glob("controller_*.log")
               for line in path.read_text(errors="replace").splitlines())


def wait_replaced(deployment: str, before: list[str], timeout_s: float = 120.0, app: str = APP) -> float:
    """Seconds until Serve runs as many replicas as before, one of them new and started."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        names = replica_actors(deployment, app)
        new = [name.rsplit("#", 1)[-1] for name in names if name not in before]
        if len(names) == len(before) and new and all(started(replica_id) for replica_id in new):
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"{deployment} was not replaced within {timeout_s} s")


def model_call_ms_since(wall_time: float) -> list[float]:
    """How long each call took in the model replicas (their access-log lines end "CALL encode OK
    12.3ms"), for the calls logged after ``wall_time`` (``time.time()``)."""
    since = datetime.fromtimestamp(wall_time).strftime("%Y-%m-%d %H:%M:%S,%f")[:23]
    durations = []
    for path in serve_log_dir().glob(f"replica_{APP}_*.log"):
        if path.name.startswith(f"replica_{APP}_Driver_"):
            continue
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) > 3 and "CALL" in parts and parts[-1].endswith("ms") and f"{parts[1]} {parts[2]}" >= since:
                durations.append(float(parts[-1][:-2]))
    return durations


def driver_log_lines(pattern: str) -> list[str]:
    return [line for path in serve_log_dir().glob(f"replica_{APP}_Driver_*.log")
            for line in path.read_text(errors="replace").splitlines() if pattern in line]


def driver_rss_mib() -> float:
    """Resident memory of this app's Driver replica processes (same machine), summed."""
    import psutil

    total = 0
    for proc in psutil.process_iter(["cmdline", "memory_info"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(f"ray::ServeReplica:{APP}:Driver"):
            total += proc.info["memory_info"].rss
    return total / 2**20


def wait_healthz(url: str, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"healthz not 200 within {timeout_s} s")


# ---- faults --------------------------------------------------------------------


def test_retry_classifier_sees_every_shape_of_replica_death():
    """The shapes Ray 2.60 was seen to raise in the driver when a replica died."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError
    from ray.serve.exceptions import BackPressureError, RayServeException

    from deployments.retries import RETRYABLE, failure_in

    upstream = RayServeException("upstream actor died before finishing a dependent task")
    upstream.__cause__ = ActorDiedError()  # how the router reports a dead producer of an argument
    for exc in (ActorDiedError(), ActorUnavailableError("unreachable", None),
                RayTaskError("fuse", "traceback", ActorDiedError()).as_instanceof_cause(), upstream):
        assert failure_in(exc, RETRYABLE) is not None, exc
    assert failure_in(ValueError("bad input"), RETRYABLE) is None
    assert failure_in(RayTaskError("encode", "traceback", ValueError("x")).as_instanceof_cause(), RETRYABLE) is None
    assert failure_in(BackPressureError(num_queued_requests=1, max_queued_requests=1), RETRYABLE) is None


@pytest.mark.parametrize("deployment", ["TextEncoder", "AudioEncoder", "FusionHead", "Driver"])
def test_killing_a_replica_under_load_fails_few_requests_and_recovers(app_url, body, deployment):
    import ray

    before = replica_actors(deployment)
    retries_before = len(driver_log_lines("(attempt"))
    with Load(f"{app_url}/v1/predict", body) as load:
        time.sleep(2)
        killed_at, killed_wall = time.monotonic(), time.time()
        ray.kill(ray.get_actor(before[0], namespace="serve"))
        replaced_s = wait_replaced(deployment, before)
        if deployment == "Driver":
            # A fixed window, so that the 1 % means the same in every run: the 30 s
            # recovery target after the kill (longer if the replacement is slow), plus 2 s.
            time.sleep(max(0.0, killed_at + RECOVERY_LIMIT_S - time.monotonic()) + 2)
        else:
            # No request may fail at all, so the window needs only to cover the kill, the
            # time without the replica and a few seconds of its replacement serving.
            time.sleep(max(0.0, killed_at + MODEL_KILL_WINDOW_S - time.monotonic(), REPLACED_SERVES_S))
    total = len(load.records)
    in_flight = sum(1 for start, end, _ in load.records if start < killed_at < end)
    failed = [(start - killed_at, status) for start, _, status in load.records if status != 200]
    # Service recovery: the last failed request ended (0 when none failed).
    recovery_s = max((end - killed_at for _, end, status in load.records if status != 200), default=0.0)
    retry_reasons = collections.Counter(
        line.split(": ", 1)[-1].split(" (attempt")[0] for line in driver_log_lines("(attempt")[retries_before:])
    print(f"\n[kill {deployment}] failed {len(failed)}/{total} ({100 * len(failed) / max(total, 1):.2f} %), "
          f"{in_flight} in flight at the kill, "
          f"statuses {load.histogram()}, last failure {recovery_s:.1f} s after the kill, "
          f"replacement replica started {replaced_s:.1f} s after it, "
          f"driver retries {dict(retry_reasons)}")
    assert total > 0 and recovery_s <= RECOVERY_LIMIT_S and replaced_s <= REPLACEMENT_LIMIT_S
    if deployment == "Driver":
        # The killed ingress replica's own requests are lost, and no others: at most the
        # requests in flight at the kill (half of them on average; all 8 were seen once,
        # 1.08 % of that run's 744, so the 1 % holds only on average over such runs).
        assert len(failed) <= in_flight, failed
    else:
        # Requests in flight in a killed model replica are resent (Serve's router, then the
        # driver's retry): none is lost.
        assert failed == [], failed
    if deployment == "Driver":
        # Requests inside the killed ingress replica are lost (HAProxy resends only
        # requests that never reached a replica); requests sent after the kill never are,
        # and the other replica goes on answering: no second passes without a 200.
        assert all(t < 2.0 for t, _ in failed), failed
        answered = sorted(end for _, end, status in load.records if status == 200)
        gap, gap_start = max((later - earlier, earlier) for earlier, later in zip(answered, answered[1:]))
        around = sorted((round(start - killed_at, 2), round(end - killed_at, 2), status)
                        for start, end, status in load.records
                        if end > gap_start - 0.5 and start < gap_start + gap + 0.5)
        print(f"[kill Driver] longest time without a 200: {gap:.2f} s, from {gap_start - killed_at:.2f} s "
              f"after the kill; requests around it (start, end, status): {around}")
        # The model replicas that were answering the killed replica go on answering the others at
        # their usual pace. With Ray's defaults each of them stalled 1 to 2.3 s, every request in it
        # waiting for Ray to give up on one answer to the dead caller (deployments/ray_env.py).
        slowest_call_ms = max(model_call_ms_since(killed_wall), default=0.0)
        print(f"[kill Driver] slowest model call after the kill: {slowest_call_ms:.0f} ms")
        assert slowest_call_ms <= 1000, slowest_call_ms
        # At most 1 s. With HAProxy marking a replica down only at its third refused connection (Ray's
        # default) this was 1.50 to 2.37 s: each retry waited HAProxy's 1 s turn-around (docs/reliability.md).
        assert gap <= 1.0, gap
    if deployment == "TextEncoder":
        # Its 0.2 s batch window always holds requests when the kill lands: those
        # must have been answered anyway (resent by Serve's router or by the
        # driver's retry), not dodged the kill by luck.
        assert in_flight > 0


def controller_says(replica_id: str, phrase: str) -> bool:
    needle = f"Replica(id='{replica_id}', deployment="
    return any(needle in line and phrase in line
               for path in serve_log_dir().glob("controller_*.log")
               for line in path.read_text(errors="replace").splitlines())


async def _burst(url: str, body: dict, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post(url, json=body) for _ in range(n)))


def test_poisoned_model_is_detected_and_its_replica_replaced(app_url, body):
    from ray import serve

    before = replica_actors("TextEncoder")
    guard_lines_before = len(driver_log_lines("ModelUnhealthy (attempt"))
    handle = serve.get_deployment_handle("TextEncoder", app_name=APP)
    poisoned = handle.inject_fault.remote("nan_weights").result()
    poisoned_at = time.monotonic()
    statuses, codes = collections.Counter(), collections.Counter()
    # A burst first: the health check runs every second, so the poisoned replica serves for
    # about that long. One request at a time missed it in a CI run (all of 38 went to the
    # healthy replica); sixteen at once are spread over both replicas by queue length.
    for r in asyncio.run(_burst(f"{app_url}/v1/predict", {"text": "is this model still sane"}, 16)):
        statuses[r.status_code] += 1
        if r.status_code != 200:
            codes[r.json()["error"]["code"]] += 1
    detected_s = replaced_s = None
    with httpx.Client(timeout=60) as client:
        while time.monotonic() - poisoned_at < 90 and replaced_s is None:
            r = client.post(f"{app_url}/v1/predict", json={"text": "is this model still sane"})
            statuses[r.status_code] += 1
            if r.status_code != 200:
                codes[r.json()["error"]["code"]] += 1
            if detected_s is None and controller_says(poisoned, "failed health check"):
                detected_s = time.monotonic() - poisoned_at
            new = [n.rsplit("#", 1)[-1] for n in replica_actors("TextEncoder") if n not in before]
            if detected_s is not None and new and all(started(replica_id) for replica_id in new):
                replaced_s = time.monotonic() - poisoned_at
            time.sleep(0.1)
    # Each NaN answer the driver refused: retried (a log line per attempt) or, once out of
    # retries, answered 503 model_unhealthy.
    guard_fired = len(driver_log_lines("ModelUnhealthy (attempt")) - guard_lines_before
    print(f"\n[poison TextEncoder {poisoned}] statuses {dict(statuses)}, error codes {dict(codes)}, "
          f"NaN answers refused by the driver {guard_fired}, "
          f"health check failed after {detected_s} s, replacement serving after {replaced_s} s")
    # NaN answers are refused (503 model_unhealthy) and retried elsewhere, never served.
    assert set(statuses) <= {200, 503} and set(codes) <= {"model_unhealthy"}
    # ...and the poisoned replica did answer some before Serve replaced it: the guard fired.
    assert guard_fired > 0, "no request reached the poisoned replica: the guard was never tested"
    assert detected_s is not None and detected_s <= 15
    assert replaced_s is not None and replaced_s <= REPLACEMENT_LIMIT_S
    assert httpx.post(f"{app_url}/v1/predict", json=body, timeout=60).status_code == 200


def test_fault_injection_is_refused_without_the_opt_in(app_url):
    from ray import serve

    handle = serve.get_deployment_handle("FusionHead", app_name=APP)
    with pytest.raises(Exception, match="fault injection is disabled"):
        handle.inject_fault.remote("nan_weights").result()


def test_missing_bundle_fails_the_build_with_a_clear_message(tmp_path):
    from deployments.app import build_app
    from model.errors import BundleError

    with pytest.raises(BundleError, match="no bundle.json"):
        build_app({"bundle": str(tmp_path / "nowhere")})


def test_corrupt_weights_fail_the_deployment_with_a_clear_message(ray_cluster, tiny_bundle, tmp_path):
    from ray import serve

    from deployments.fusion_head import FusionHeadDeployment

    bundle = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "fusion.safetensors").write_bytes(b"\x00" * 64 + b"not safetensors")
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="Deploying application corrupt-bundle failed"):
            serve.run(FusionHeadDeployment.options(max_constructor_retry_count=1, ray_actor_options={"num_cpus": 0.1})
                      .bind(str(bundle)), name="corrupt-bundle", route_prefix=None)
        # `serve status` shows why, naming the file.
        message = serve.status().applications["corrupt-bundle"].deployments["FusionHead"].message
    finally:
        serve.delete("corrupt-bundle")
    print(f"\n[corrupt bundle] deployment refused in {time.monotonic() - start:.1f} s")
    assert "fusion.safetensors is corrupt or does not match the config" in message


# ---- overload ------------------------------------------------------------------


def test_burst_far_above_capacity_gets_fast_503s_and_health_returns(app_url):
    """200 at once against 2 drivers x (16 running + 16 queued): the rest must be refused fast."""

    async def burst() -> list[tuple[int, float, str | None]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            async def one(i: int):
                start = time.monotonic()
                r = await client.post(f"{app_url}/v1/predict", json={"text": f"burst request {i}"})
                source = "driver" if r.headers.get("content-type", "").startswith("application/json") else "proxy"
                return r.status_code, time.monotonic() - start, r.headers.get("retry-after"), source, r
            return await asyncio.gather(*(one(i) for i in range(200)))

    rss_before = driver_rss_mib()
    results = asyncio.run(burst())
    ended = time.monotonic()
    rss_after = driver_rss_mib()
    histogram = collections.Counter(status for status, *_ in results)
    sources = collections.Counter(source for status, *_, source, _ in results if status == 503)
    rejected = sorted(seconds for status, seconds, *_ in results if status == 503)
    healthz_s = wait_healthz(app_url, timeout_s=5.0)
    print(f"\n[burst 200] statuses {dict(histogram)}, 503 latency median "
          f"{rejected[len(rejected) // 2] if rejected else float('nan'):.2f} s max "
          f"{rejected[-1] if rejected else float('nan'):.2f} s, "
          f"200 latency max {max(s for st, s, *_ in results if st == 200):.2f} s, 503s from {dict(sources)}, "
          f"healthz 200 after {healthz_s:.2f} s, driver RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    assert set(histogram) <= {200, 503}
    assert rss_before > 0 and rss_after - rss_before < 200, "the burst grew the drivers' memory"
    assert histogram[200] > 0 and histogram[503] > 0
    assert all(retry for status, _, retry, *_ in results if status == 503), "a 503 without Retry-After"
    # A 503 the driver answered is the API's error shape with an overload code; one the
    # replica's HTTP front refused before the driver's code ran (max_queued_requests) is
    # Serve's own back-pressure reply. Nothing else.
    for status, _, _, source, r in results:
        if status != 503:
            continue
        if source == "driver":
            body = r.json()
            assert body["error"]["code"] in {"overloaded", "unavailable"} and body["error"]["message"], body
            assert body["request_id"] == r.headers["x-request-id"], body
        else:
            assert r.text == "Request dropped due to backpressure", r.text[:200]
    assert time.monotonic() - ended < 5.0
    assert httpx.post(f"{app_url}/v1/predict", json={"text": "after the storm"}, timeout=30).status_code == 200


# ---- the only replica ------------------------------------------------------------
# Last in the module: it scales the module's app down to one AudioEncoder, as
# serve_config.yaml runs AudioEncoder and FusionHead.


@pytest.fixture
def one_audio_encoder(app_url, tiny_bundle):
    """The module's app with one AudioEncoder replica: Serve stops one of the two and leaves
    the other deployments' replicas running."""
    others = {name: replica_actors(name) for name in DEPLOYMENTS if name != "AudioEncoder"}
    apply_config(app_config(tiny_bundle, audio_encoders=1))
    deadline = time.monotonic() + 60
    while len(replica_actors("AudioEncoder")) != 1:
        assert time.monotonic() < deadline, replica_actors("AudioEncoder")
        time.sleep(0.2)
    wait_healthy(app_url, timeout_s=60)
    assert {name: replica_actors(name) for name in others} == others, "scaling one deployment restarted others"
    return app_url


def test_killing_the_only_audio_encoder_never_hangs_a_request(one_audio_encoder, body):
    """A request in flight in the killed replica is resent or gets a prompt 503; none
    waits past request_timeout_s, and every request sent once the replacement is
    running succeeds."""
    import ray

    before = replica_actors("AudioEncoder")
    with Load(f"{one_audio_encoder}/v1/predict", body, concurrency=4) as load:
        time.sleep(2)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(before[0], namespace="serve"))
        replaced_at = killed_at + wait_replaced("AudioEncoder", before)
        time.sleep(4)
    slowest = max(end - start for start, end, _ in load.records)
    late_failures = [(start - replaced_at, status) for start, _, status in load.records
                     if start > replaced_at and status != 200]
    in_flight = [status for start, end, status in load.records if start < killed_at < end]
    print(f"\n[kill the only AudioEncoder] {len(load.records)} requests, statuses {load.histogram()}, "
          f"in flight at the kill {in_flight}, replacement running {replaced_at - killed_at:.1f} s after the kill, "
          f"slowest request {slowest:.1f} s")
    assert in_flight, "no request was in flight at the kill: the test proved nothing"
    assert slowest <= REQUEST_TIMEOUT_S + 1.0, slowest
    assert late_failures == [], late_failures
    assert set(load.histogram()) <= {200, 503}, load.histogram()
