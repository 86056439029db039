"""What an operator does to a running app, on a real local Ray: change user_config live,
hit the request deadline (504), see abandoned requests cancelled, lose a deployment
(/healthz 503), and let autoscaling add a replica under load and remove it after.

The app is deployed the way ``serve deploy serve_config.yaml`` does it (a declarative
config applied by the controller), so a user_config change reconfigures the running
replicas instead of replacing them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import apply_config, deploy_config, serve_log_dir, wait_app_running

pytestmark = pytest.mark.slow

APP, PREFIX = "operations", "/ops"
REQUEST_TIMEOUT_S = 2.0
BATCHING = {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}
# Short delays and look-back, so a scale-up and the scale-down after it fit in a test.
# target 4: the few concurrent requests of the other tests never scale it.
AUTOSCALING = {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4,
               "upscale_delay_s": 1, "downscale_delay_s": 3, "look_back_period_s": 2, "metrics_interval_s": 0.5}


def config(bundle, text_batching: dict) -> dict:
    """A serve_config.yaml-shaped config for this module's app (small CPU shares, one
    replica of each deployment but the autoscaled TextEncoder)."""
    one = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    return {
        "name": APP, "route_prefix": PREFIX, "import_path": "deployments.app:build_app",
        "args": {"bundle": str(bundle), "settings": {"ui": False, "request_timeout_s": REQUEST_TIMEOUT_S}},
        "deployments": [
            {"name": "Driver", **one},
            {"name": "TextEncoder", "max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 0.1},
             "autoscaling_config": AUTOSCALING, "user_config": text_batching},
            {"name": "AudioEncoder", **one},
            {"name": "FusionHead", **one},
        ],
    }


def apply(bundle, text_batching: dict) -> None:
    """What ``serve deploy`` sends: the controller applies the config to the running app."""
    apply_config(config(bundle, text_batching))


def running_replicas(deployment: str) -> int:
    from ray import serve

    return serve.status().applications[APP].deployments[deployment].replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def url(ray_cluster, tiny_bundle):
    from ray import serve

    app_url = deploy_config(ray_cluster, config(tiny_bundle, BATCHING))
    yield app_url
    serve.delete(APP)


@pytest.fixture
def batching(url, tiny_bundle):
    """Apply a TextEncoder user_config for one test; the module's is restored after it."""
    def change(new: dict) -> None:
        apply(tiny_bundle, new)
        wait_app_running(APP)

    yield change
    change(BATCHING)
    wait_for_stats(url, BATCHING)


def text_stats(url: str) -> dict:
    r = httpx.get(f"{url}/v1/stats", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["TextEncoder"]


def wait_for_stats(url: str, batching: dict, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        stats = text_stats(url)
        if all(stats[key] == value for key, value in batching.items()):
            return stats
        assert time.monotonic() < deadline, f"the replica still batches with {stats} after {timeout_s} s"
        time.sleep(0.5)


def post_texts(url: str, n: int, concurrency: int) -> list[int]:
    with httpx.Client(timeout=60) as client, concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: client.post(f"{url}/v1/predict", json={"text": f"review {i}"}).status_code,
                             range(n)))


def test_user_config_change_reconfigures_the_running_replica(url, batching):
    before = wait_for_stats(url, BATCHING)
    smaller = {"max_batch_size": 3, "batch_wait_timeout_s": 0.2}
    batching(smaller)
    after = wait_for_stats(url, smaller)
    # Live: the same process took the new batch size; Serve did not replace the replica.
    assert after["pid"] == before["pid"], (before, after)
    # ...and forms batches by it: 4 at a time, each waiting up to 0.2 s for company,
    # never more than 3 to a batch (the old 16 would have taken all 4).
    assert post_texts(url, 12, concurrency=4) == [200] * 12
    done = text_stats(url)
    formed = {int(size): count - after["histogram"].get(size, 0) for size, count in done["histogram"].items()}
    formed = {size: count for size, count in formed.items() if count > 0}
    print(f"\n[reconfigure] pid {before['pid']} unchanged; batches formed after the change {formed}")
    assert formed and max(formed) == 3, formed


def test_a_request_past_the_deadline_gets_504_timeout(url, batching):
    # A lone request now waits 4.5 s (the most BatchingConfig allows is 5) in the TextEncoder's
    # batch window, past the driver's 2 s deadline.
    slow = {"max_batch_size": 64, "batch_wait_timeout_s": 4.5}
    batching(slow)
    wait_for_stats(url, slow)
    start = time.monotonic()
    r = httpx.post(f"{url}/v1/predict", json={"text": "a slow review"}, timeout=30)
    took = time.monotonic() - start
    print(f"\n[deadline] {r.status_code} after {took:.2f} s: {r.text[:200]}")
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["error"]["code"] == "timeout" and f"{REQUEST_TIMEOUT_S:g} s" in body["error"]["message"], body
    assert body["request_id"] == r.headers["x-request-id"]
    # The deadline, not the batch window, ended it.
    assert REQUEST_TIMEOUT_S <= took < REQUEST_TIMEOUT_S + 2.0, took


def log_lines_naming(deployment: str, request_id: str) -> list[str]:
    return [line for path in serve_log_dir().glob(f"replica_{APP}_{deployment}_*.log")
            for line in path.read_text(errors="replace").splitlines() if request_id in line]


def test_a_client_that_hangs_up_cancels_its_downstream_work(url, batching):
    # Each request waits 1.5 s in the TextEncoder's batch window (inside the driver's 2 s
    # deadline, so only the hang-up can cancel it); each client leaves after 0.3 s. The
    # cancel has 1.2 s to travel HAProxy -> driver -> encoder; uncancelled, all six are
    # encoded when the window closes.
    window = {"max_batch_size": 64, "batch_wait_timeout_s": 1.5}
    batching(window)
    wait_for_stats(url, window)
    ids = [f"hangup-{i}-{uuid.uuid4().hex[:8]}" for i in range(6)]

    def abandon(request_id: str) -> bool:
        try:
            httpx.post(f"{url}/v1/predict", json={"text": "nobody waits for this"},
                       headers={"X-Request-ID": request_id}, timeout=0.3)
        except httpx.TimeoutException:
            return True
        return False

    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        assert all(pool.map(abandon, ids))
    time.sleep(window["batch_wait_timeout_s"] + 2.0)  # past the window, had they stayed queued
    outcome = collections.Counter()
    for request_id in ids:
        lines = log_lines_naming("TextEncoder", request_id)
        outcome["encoded" if any("CALL encode OK" in line for line in lines) else
                "cancelled" if any("CANCELLED" in line for line in lines) else "never reached"] += 1
    reached_driver = [i for i in ids if log_lines_naming("Driver", f"request {i}:")]
    # Serve logs this in the driver when the request's task is cancelled (its client went away).
    told = [i for i in ids if any("Cancelling request" in line for line in log_lines_naming("Driver", i))]
    encoded = [i for i in ids if any("CALL encode OK" in line for line in log_lines_naming("TextEncoder", i))]
    print(f"\n[disconnect] 6 abandoned requests: {len(reached_driver)} reached the driver, {len(told)} of them "
          f"saw their client leave; at the text encoder: {dict(outcome)}")
    # They did get in (else nothing was tested): all parsed by the driver.
    assert reached_driver == ids, reached_driver
    # Every request whose driver saw the hang-up was cancelled in the encoder's queue: no
    # forward pass ran for it. (That the driver sees every hang-up through HAProxy is not
    # asserted: in one run 2 of 6 were not seen; docs/reliability.md.)
    assert told, "no driver saw its client leave: cancellation was not tested"
    assert not set(told) & set(encoded), (told, encoded)
    assert httpx.post(f"{url}/v1/predict", json={"text": "still here"}, timeout=30).status_code == 200


def test_healthz_answers_503_while_a_deployment_is_down(url):
    import ray

    prefix = f"SERVE_REPLICA::{APP}#FusionHead#"
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    ray.kill(ray.get_actor(name, namespace="serve"))
    killed_at = time.monotonic()
    unhealthy, recovered_s = [], None
    while time.monotonic() - killed_at < 120:
        r = httpx.get(f"{url}/healthz", timeout=10)
        if r.status_code == 503:
            unhealthy.append(r)
        elif r.status_code == 200 and unhealthy:
            recovered_s = time.monotonic() - killed_at
            break
        time.sleep(0.2)
    print(f"\n[healthz] {len(unhealthy)} answers 503 after the kill, 200 again {recovered_s} s after it")
    assert unhealthy, "/healthz never reported the dead FusionHead"
    assert all(r.json()["status"] == "unhealthy" and r.headers["retry-after"] for r in unhealthy)
    assert recovered_s is not None, "/healthz never recovered"
    assert httpx.post(f"{url}/v1/predict", json={"text": "back again"}, timeout=60).status_code == 200


def test_load_adds_a_text_encoder_replica_and_idleness_removes_it(url, batching):
    # A batch window that holds requests, so 16 clients keep far more than 4 ongoing.
    batching({"max_batch_size": 4, "batch_wait_timeout_s": 0.1})
    assert running_replicas("TextEncoder") == 1
    stop, statuses = threading.Event(), []

    def client():
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                statuses.append(c.post(f"{url}/v1/predict", json={"text": "load"}).status_code)

    workers = [threading.Thread(target=client) for _ in range(16)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    try:
        up_s = None
        while time.monotonic() - start < 120:
            if running_replicas("TextEncoder") == 2:
                up_s = time.monotonic() - start
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert up_s is not None, "no second TextEncoder replica under load within 120 s"
    idle_at = time.monotonic()
    down_s = None
    while time.monotonic() - idle_at < 120:
        if running_replicas("TextEncoder") == 1:
            down_s = time.monotonic() - idle_at
            break
        time.sleep(0.5)
    print(f"\n[autoscaling] 2 TextEncoder replicas {up_s:.1f} s into the load, back to 1 {down_s} s after it; "
          f"{len(statuses)} requests, statuses {sorted(set(statuses))}")
    assert down_s is not None, "the second replica outlived the load by 120 s"
    assert set(statuses) == {200}, sorted(set(statuses))
