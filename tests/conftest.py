"""Shared fixtures: tiny locally-built checkpoints and one real local Ray cluster per pytest process.

Starting Ray and Serve is slow, so a pytest process (each xdist worker is one) starts
one cluster and shares it; test modules deploy their own applications onto it. Ports,
health waits and subprocess paths come from ``harness`` (shared with benchmarks/ and
loadtest/); ``free_port``, ``wait_healthy`` and ``repo_pythonpath`` stay importable from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deployments import ray_env
from harness import free_port, repo_pythonpath, wait_healthy

__all__ = ["EXAMPLES", "deploy", "free_port", "repo_pythonpath", "tone", "wait_healthy", "write_speech"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A stopping ingress replica stays reachable this long so that load balancers in front of
# the replicas can deregister it (Ray's default: 30 s, ray/serve/_private/replica.py). Here
# the balancer is Serve's own HAProxy, which drops it within a reload and retries refused
# connections; at 30 s every deleted app or replaced Driver would cost half a minute.
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


# Phases and workers. ``make test`` (scripts/test.sh) runs in two phases:
#   1. the destructive phase: the destructive tests (kills and bursts, timed to the second,
#      and the two-node test, whose node startup has a fixed 30 s deadline in Ray), one after
#      the other: beside each other the two-node test's recovery took up to 164 s of its
#      180 s bound, and once failed (docs/operations.md, "Test suite"). Only work that starts
#      no Ray runs beside them, at idle CPU priority: the quick demo bundle's build and the
#      fast tier;
#   2. the main phase: everything else (``-m "slow and not destructive"``), on two workers
#      (``-n 2 --dist loadgroup``), each starting its own Ray cluster when a test first
#      needs one.
# In the main phase all of a group's tests run on one worker, module after module in the order
# the group lists them, and a module in no group is a group of its own
# (``pytest_xdist_make_scheduler``). The two groups are balanced by their modules' measured
# times, and each ends with modules that keep the cores busy: a module that mostly waits
# (Prometheus's scrapes) runs while the other worker has work (docs/operations.md, "Test suite").
WORKER_GROUPS = {
    # Prometheus's app, then the shared tiny-bundle app (``served_app``) with the apps beside it.
    "shared-app": ("test_prometheus", "test_batch_scoring", "test_serving", "test_oip", "test_tracing",
                   "test_transcript", "test_ui_browser"),
    # The test that starts a cluster of its own (make run, make loadtest's runner and a bundle
    # rollover against it), the two modules that share the app behind a key (``guarded_app``),
    # and the module that changes its app's replicas.
    "own-clusters": ("test_front_door", "test_fuzz", "test_security", "test_operations"),
}
_GROUP_OF = {module: group for group, modules in WORKER_GROUPS.items() for module in modules}


# The apps that several modules share, each deployed once and deleted after the last test
# that uses it: fixture -> app name.
SHARED_APPS = {"served_app": "sentiment", "guarded_app": "guarded"}


def _uses(item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` by ``WORKER_GROUPS``. xdist's own loadgroup reads ``xdist_group``
    marks by appending the group to ``item._nodeid`` (xdist 3.8, remote.py), which pytest 9.2
    no longer reads (``Node.nodeid`` is ``str(self._id)``): every test became a group of its own
    and modules were split across the workers. Its scope scheduler takes a scope function."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkerGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return _GROUP_OF.get(Path(module).stem, module)

    return ByWorkerGroup(config, log)


def pytest_collection_modifyitems(items):
    """Every test that needs the Ray cluster is slow, marked or not: ``make test-fast``
    (``-m "not slow"``) can never start one by accident.

    The modules that use one of the ``SHARED_APPS`` run one after another, where the first of
    them stands: the app is deployed once for all of them and deleted after the last
    (``pytest_runtest_teardown``), not kept idle beside the other modules' apps. They must be
    in one worker group, so that one worker runs them all."""
    for item in items:
        # A destructive test is slow too, so neither the fast tier nor the main phase runs one.
        if "ray_cluster" in getattr(item, "fixturenames", ()) or item.get_closest_marker("destructive"):
            item.add_marker(pytest.mark.slow)
    # A module's rank: its place in its group, then where it was collected (the fast tier's
    # modules, in no group, keep the collection order).
    listed = {module: place for modules in WORKER_GROUPS.values() for place, module in enumerate(modules)}
    rank = {}
    for index, item in enumerate(items):
        rank.setdefault(item.module.__name__, (listed.get(item.module.__name__, len(items)), index))
    sharing = {fixture: {rank[item.module.__name__] for item in items if _uses(item, fixture)}
               for fixture in SHARED_APPS}

    def place(item):
        own = rank[item.module.__name__]
        block = next((min(modules) for modules in sharing.values() if own in modules), own)
        return (block, own)

    items.sort(key=place)


def pytest_runtest_teardown(item, nextitem):
    for fixture in SHARED_APPS:
        if _uses(item, fixture) and not any(_uses(later, fixture) for later in _items_after(item)):
            _SHARED.pop(fixture, lambda: None)()


def _items_after(item):
    items = item.session.items
    return items[items.index(item) + 1:]


_SHARED: dict = {}  # name -> the finalizer of a fixture shared across modules


def _shared_app(fixture: str, value):
    """The rest of a ``SHARED_APPS`` fixture once its app is deployed: yields ``value``; the app
    is deleted after the last test that uses it (``pytest_runtest_teardown``), else at the end."""
    from ray import serve

    _SHARED[fixture] = lambda: serve.delete(SHARED_APPS[fixture])
    yield value
    _SHARED.pop(fixture, lambda: None)()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    from model.factory import save_tiny_bundle

    path = tmp_path_factory.mktemp("bundles") / "tiny"
    save_tiny_bundle(path)
    return path


def tone(seconds: float = 1.0, rate: int = 16_000, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype("float32")


@pytest.fixture(scope="session")
def wav_bytes() -> bytes:
    from model.audio import encode_wav

    return encode_wav(tone(1.0, 22_050), 22_050)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray (4 logical CPUs on 2 cores: replicas mostly idle in tests) plus Serve on a free port."""
    import ray
    from ray import serve

    # address="local": always a fresh cluster, never one some other `ray start` left running.
    # Its processes get the same Serve request path as `make run` (deployments/ray_env.py).
    # A short path: Ray and HAProxy put unix sockets under it. HAProxy allows 97 bytes, and
    # Ray adds a 56-character node id below run_dir/haproxy/ (.../metrics.sock).
    run_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    with ray_env.for_new_cluster(run_dir):
        # Metrics on a known port (tests/test_prometheus.py), reported at Ray's default 10 s
        # as on users' clusters: at 2 s every process of every test cluster exported five times
        # as often, and the whole suite paid for it in idle CPU (docs/operations.md, "Test suite").
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 _metrics_export_port=free_port())
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()  # stops HAProxy too
    ray.shutdown()
    shutil.rmtree(run_dir, ignore_errors=True)


def serve_log_dir() -> Path:
    """This session's Serve logs (controller, and one file per replica)."""
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "serve"


def replica_log_lines(app: str, deployment: str, pattern: str, log_dir: Path | None = None) -> dict[str, int]:
    """Per replica of ``app``'s ``deployment``: how many of its own log lines contain ``pattern``."""
    counts = {}
    for path in (log_dir or serve_log_dir()).glob(f"replica_{app}_{deployment}_*.log"):
        counts[path.stem.rsplit("_", 1)[-1]] = sum(pattern in line for line in path.read_text(errors="replace").splitlines())
    return counts


def deploy(url: str, args: dict, name: str = "sentiment", route_prefix: str = "/") -> str:
    """Deploy the real application (deployments.app.build_app) and wait until it answers."""
    from ray import serve

    from deployments.app import build_app

    serve.run(build_app(args), name=name, route_prefix=route_prefix)
    app_url = url.rstrip("/") + (route_prefix if route_prefix != "/" else "")
    wait_healthy(app_url)
    return app_url


def apply_config(application: dict) -> None:
    """What ``serve deploy`` sends, for one serve_config.yaml-shaped application: the
    controller applies it to the running cluster. Unlike ``serve.run``, which gives every
    deployment a new random version (``ray/serve/_private/client.py``), a change to a
    deployment's ``num_replicas`` or ``user_config`` alone is applied in place: the other
    replicas keep running. Other apps deployed this way, and not named here, are deleted."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}))


def wait_app_running(name: str, timeout_s: float = 180.0) -> None:
    """Until Serve reports the app RUNNING; fails at once if its deploy failed."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        app = serve.status().applications.get(name)
        if app is not None and app.status == "RUNNING":
            return
        assert app is None or app.status != "DEPLOY_FAILED", app and app.message
        time.sleep(0.5)
    raise TimeoutError(f"{name} not RUNNING within {timeout_s} s")


def deploy_config(url: str, application: dict) -> str:
    """``deploy`` for a serve_config.yaml-shaped application (``apply_config``): deploy it
    and wait until it answers."""
    apply_config(application)
    wait_app_running(application["name"])
    app_url = url.rstrip("/") + application["route_prefix"]
    wait_healthy(app_url)
    return app_url


# The served bundle's examples/ (the layout model.demo writes, deployments/ui/bundle_card.py):
# (text, audio file or None, caption, espeak-ng voice (words per minute, pitch)).
EXAMPLES = [
    ("I absolutely loved this movie, it was wonderful.", "lively.wav", "positive words, lively voice", (190, 75)),
    ("Oh great, another wonderful sequel.", "flat.wav", "disagree: positive words, flat voice", (120, 20)),
    ("The plot was dull and the acting was worse.", None, "text only: negative", None),
]
SERVED_DRIVER_REPLICAS = 2  # as serve_config.yaml runs them


def write_speech(path: Path, text: str, rate: int, pitch: int) -> None:
    """Real synthesized speech when espeak-ng is available (program or wheel), else a tone."""
    import model.demo.speech as speech
    from model.audio import encode_wav

    if speech.available():
        speech.synthesize_wav(path, text, speech.Voice(rate=rate, pitch=pitch))
    else:
        path.write_bytes(encode_wav(tone(2.0, 16_000, 180.0 + pitch), 16_000))


@pytest.fixture(scope="session")
def served_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle plus examples/, so the page's examples path is exercised too."""
    import json

    path = tmp_path_factory.mktemp("served") / "bundle"
    shutil.copytree(tiny_bundle, path)
    folder = path / "examples"
    folder.mkdir()
    entries = []
    for text, audio, caption, voice in EXAMPLES:
        entry = {"text": text, "caption": caption}
        if audio:
            write_speech(folder / audio, text, *voice)
            entry["audio"] = audio
        entries.append(entry)
    # Entries the page must skip without failing: a path escaping the folder, a missing file.
    entries += [{"text": "escape", "audio": "../bundle.json"}, {"text": "gone", "audio": "missing.wav"}]
    (folder / "examples.json").write_text(json.dumps({"examples": entries}, indent=2))
    return path


@pytest.fixture(scope="session")
def otlp_collector():
    """The OTLP/HTTP receiver the shared app's replicas export their traces to."""
    from tests.otlp_collector import Collector

    collector = Collector()
    yield collector
    collector.server.shutdown()


@pytest.fixture(scope="session")
def served_app(ray_cluster, served_bundle, otlp_collector):
    """The app serving the tiny bundle (with examples) at ``/``, UI on, two Driver replicas as in
    serve_config.yaml; batch windows widened so batching is observable; its traces exported
    to ``otlp_collector`` (tests/test_tracing.py), every half second (OpenTelemetry's
    default: 5 s).

    Shared by the modules that leave it as they found it (every app deployed costs about
    40 s of CPU on the two cores); deleted after the last test that uses it (an idle app
    still costs CPU: health checks, metrics)."""
    from deployments import tracing
    from deployments.app import AudioEncoderDeployment, Driver, FusionHeadDeployment, TextEncoderDeployment

    env = tracing.ray_env(otlp_collector.endpoint) | {"OTEL_BSP_SCHEDULE_DELAY": "500"}
    # ray_actor_options replace the code's: its CPU shares are kept, with the tracing environment.
    traced = {d.name: {"ray_actor_options": {**d.ray_actor_options, "runtime_env": {"env_vars": env}}}
              for d in (Driver, TextEncoderDeployment, AudioEncoderDeployment, FusionHeadDeployment)}
    args = {
        "bundle": str(served_bundle),
        "deployments": traced | {
            "Driver": traced["Driver"] | {"num_replicas": SERVED_DRIVER_REPLICAS},
            "TextEncoder": traced["TextEncoder"] | {"user_config": {"max_batch_size": 16, "batch_wait_timeout_s": 0.05}},
        },
    }

    url = deploy(ray_cluster, args, name=SHARED_APPS["served_app"])
    yield from _shared_app("served_app", url)


GUARDED_KEY_ENV = "SENTIMENT_TEST_API_KEY"
# Small caps, so that fuzzing reaches every one with small bodies. /v1/predict and Gradio's
# upload take long recordings: their caps are the max_long_* ones.
GUARDED_LIMITS = {"max_body_bytes": 256 * 1024, "max_text_chars": 300, "max_audio_bytes": 128 * 1024,
                  "max_audio_seconds": 3, "max_long_body_bytes": 256 * 1024,
                  "max_long_audio_bytes": 128 * 1024, "max_long_audio_seconds": 3}


@dataclass(frozen=True)
class GuardedApp:
    url: str
    key: str
    limits: dict

    @property
    def bearer(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="session")
def guarded_app(ray_cluster, tiny_bundle) -> GuardedApp:
    """The tiny bundle behind an API key, UI on, with small input limits (``GUARDED_LIMITS``).
    The security checks (test_security) and the fuzzing of the served API (test_fuzz) share
    it; deleted after the last test that uses it. The key is made here, for this run only."""
    key = "k-" + uuid.uuid4().hex
    args = {
        "bundle": str(tiny_bundle),
        "settings": {"ui": True, "api_key_env": GUARDED_KEY_ENV, "limits": GUARDED_LIMITS},
        "deployments": {
            "Driver": {"ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": {GUARDED_KEY_ENV: key}}}},
            **{name: {"ray_actor_options": {"num_cpus": 0.1}} for name in ("TextEncoder", "AudioEncoder", "FusionHead")},
        },
    }
    name = SHARED_APPS["guarded_app"]
    url = deploy(ray_cluster, args, name=name, route_prefix=f"/{name}")
    yield from _shared_app("guarded_app", GuardedApp(url, key, GUARDED_LIMITS))
