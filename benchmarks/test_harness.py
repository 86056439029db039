"""Fast checks of the harness's own arithmetic (no models, no Ray):
``python -m pytest benchmarks/test_harness.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_report import settle_note
from benchmarks.closed_loop import stats_delta, summarize_level
from benchmarks.inprocess import closed_loop_fifo
from benchmarks.latency_stats import summarize
from benchmarks.profiling import summarize_collapsed
from benchmarks.served_config import derive_config, scale_up_trigger
from benchmarks.targets import evaluate
from harness import role_of

ROOT = Path(__file__).resolve().parent.parent


def test_fifo_queue_latency_is_concurrency_times_service():
    # One server, 1 s per request, 4 closed-loop clients: every steady-state request
    # waits for the 3 ahead of it, so latency is 4 s.
    assert closed_loop_fifo([1.0], 4, 40) == pytest.approx([4.0] * 36)
    assert closed_loop_fifo([0.5], 1, 10) == pytest.approx([0.5] * 9)


def test_summarize_percentiles_in_ms():
    s = summarize([i / 1000 for i in range(1, 101)])
    assert s["n"] == 100 and s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)
    assert summarize([])["p50_ms"] is None


def test_level_counts_only_the_steady_window():
    records = [(0.0, 1.0, 200, "text"), (2.0, 3.0, 200, "text"), (2.5, 9.5, 503, "audio"), (8.0, 12.0, 200, "both")]
    level = summarize_level(records, duration_s=10.0, warmup_s=2.0)
    assert level["throughput_rps"] == pytest.approx(1 / 8)  # only the 3.0 completion is in [2, 10]
    assert level["requests"] == 3 and level["ok"] == 2 and level["status_503"] == 1
    assert level["p50_ms"] == pytest.approx(2500.0)  # 1 s and 4 s


def test_work_weighted_throughput_counts_request_cost():
    # Two cheap completions and one costly one in a 10 s window; weights are relative costs.
    records = [(0.0, 1.0, 200, "text", 0), (1.0, 2.0, 200, "text", 0), (0.0, 5.0, 200, "both", 1)]
    level = summarize_level(records, duration_s=10.0, warmup_s=0.0, weights=[0.5, 2.0])
    assert level["throughput_rps"] == pytest.approx(0.3)
    assert level["work_rps"] == pytest.approx((0.5 + 0.5 + 2.0) / 10)


def test_stats_delta_subtracts_the_same_replica_only():
    before = {"TextEncoder": {"pid": 1, "histogram": {"1": 5, "4": 1}}}
    after = {"TextEncoder": {"pid": 1, "histogram": {"1": 7, "4": 3}},
             "AudioEncoder": {"pid": 2, "histogram": {"2": 1}}}
    delta = stats_delta(before, after)
    assert delta["TextEncoder"]["histogram"] == {"1": 2, "4": 2}
    assert delta["TextEncoder"]["mean_batch_size"] == 2.5
    assert delta["AudioEncoder"]["histogram"] == {"2": 1} and delta["AudioEncoder"]["same_replica"] is False


def test_derived_config_keeps_the_real_deployments_and_applies_overrides(tmp_path):
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 12345,
                           {"TextEncoder.user_config": {"max_batch_size": 1}})
    assert config["http_options"] == {**config["http_options"], "host": "127.0.0.1", "port": 12345}
    app = config["applications"][0]
    assert app["args"]["bundle"] == str(tmp_path.resolve())
    names = [d["name"] for d in app["deployments"]]
    assert {"Driver", "TextEncoder", "AudioEncoder", "FusionHead"} <= set(names)
    text = next(d for d in app["deployments"] if d["name"] == "TextEncoder")
    assert text["user_config"] == {"max_batch_size": 1}  # replaced, like Serve does
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 1, {"logging_config.enable_access_log": False,
                                                                     "app.args.settings.ui": False})
    assert config["logging_config"]["enable_access_log"] is False
    assert config["applications"][0]["args"]["settings"]["ui"] is False


def test_process_roles_from_ray_titles():
    assert role_of(["ray::ServeReplica:sentiment:TextEncoder"], "python") == "TextEncoder"
    assert role_of(["ray::ProxyActor"], "python") == "Proxy"
    assert role_of(["/usr/bin/raylet", "--x"], "raylet") == "ray-system"
    # While a replica runs a method, Ray appends it to the title.
    assert role_of(["ray::ServeReplica:sentiment:AudioEncoder.handle_request"]) == "AudioEncoder"


def test_collapsed_stacks_shares():
    text = "main (a.py:1);encode (b/c.py:10);forward (d/e.py:3) 3\nmain (a.py:2);json (f.py:9) 1\n"
    out = summarize_collapsed(text)
    assert out["samples"] == 4
    assert dict(out["top_inclusive"])["main (a.py)"] == 1.0
    assert dict(out["top_self"])["forward (d/e.py)"] == 0.75


def test_targets_flag_a_miss():
    results = {
        "limit": {"throughput_rps": 10.0, "best_batch_size": 8, "best_threads": 2, "ok_per_cpu_s": 5.0},
        "seed": {"throughput_rps": 5.0, "service": {"p50_ms": 100.0}, "service_by_kind": {},
                 "by_concurrency": {"16": {"p99_ms": 3000.0}}},
        "served": {"levels": [
            {"concurrency": 1, "throughput_rps": 4.0, "p50_ms": 130.0, "p99_ms": 200.0, "by_kind": {},
             "ok_per_cpu_s": 2.0},
            {"concurrency": 16, "throughput_rps": 8.0, "p50_ms": 1900.0, "p99_ms": 2500.0, "by_kind": {},
             "ok_per_cpu_s": 4.0},
        ]},
    }
    rows = {r["target"].split(" ")[0]: r for r in evaluate(results)}
    assert rows["(c)/(a)"]["value"] == 0.8 and not rows["(c)/(a)"]["met"]
    assert rows["(c)/(b)"]["value"] == 1.6 and rows["(c)/(b)"]["met"]
    assert rows["overhead"]["value"] == 30.0 and not rows["overhead"]["met"]


def test_scale_up_trigger_reads_the_laptop_config(tmp_path):
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 8123)
    trigger, decide_s = scale_up_trigger(config)
    targets = [d["autoscaling_config"]["target_ongoing_requests"]
               for d in config["applications"][0]["deployments"] if "autoscaling_config" in d]
    assert trigger == min(targets)
    # Ray's 30 s look-back window plus the config's 10 s upscale delay.
    assert decide_s == 40.0


def test_fixed_replica_configs_never_settle(tmp_path):
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 8123,
                           {"TextEncoder.autoscaling_config.max_replicas": 1,
                            "AudioEncoder.autoscaling_config.max_replicas": 1})
    assert scale_up_trigger(config) == (None, 0.0)


def test_settle_note_names_the_settled_levels():
    levels = [{"concurrency": 4, "settle": None},
              {"concurrency": 16, "settle": {"seconds": 62.4, "replicas": {"AudioEncoder": {"RUNNING": 2}}}}]
    note = settle_note(levels)
    assert "c=16: 62 s, then AudioEncoder 2" in note and "c=4" not in note
    assert "No level waited" in settle_note([{"concurrency": 1, "settle": None}])
