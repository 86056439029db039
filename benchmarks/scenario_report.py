"""The report's scenario sections: CPU per request by process role for every served level, and the model-bound limit."""

from __future__ import annotations

from benchmarks.cpu_cost import ROLE_ORDER
from benchmarks.model_bound import fraction_of_bound
from benchmarks.targets import work_per_cpu, work_rps

MAIN, DEMO, FRONT_DOOR = "base models", "demo bundle", "front door"


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _row(scenario: str, workload: str, level: dict, limit: dict | None, bound: dict | None,
         driver_replicas: int | None = None) -> dict:
    rps = work_rps(level)
    return {
        "scenario": scenario, "workload": workload, "concurrency": level["concurrency"],
        "driver_replicas": driver_replicas or (level.get("running_replicas") or {}).get("Driver"),
        "rps": rps, "p50_ms": level.get("p50_ms"), "p99_ms": level.get("p99_ms"), "errors": level.get("errors"),
        "by_role": level.get("cpu_ms_per_request_by_role") or {}, "total_ms": level.get("cpu_ms_per_request"),
        "serving_ms": level.get("serving_cpu_ms_per_request"), "per_cpu": work_per_cpu(level),
        "vs_limit_per_cpu": _ratio(work_per_cpu(level), work_per_cpu(limit) if limit else None),
        "vs_limit_rps": _ratio(rps, work_rps(limit) if limit else None),
        "of_bound": fraction_of_bound(rps, bound),
    }


def _refs(inprocess: dict | None, name: str) -> tuple[dict | None, dict | None]:
    ref = (inprocess or {}).get(name) or {}
    return ref.get("limit"), ref.get("model_bound")


def level_rows(results: dict) -> list[dict]:
    """One row per served level of every scenario, with the in-process references of its workload."""
    rows = []
    served = results.get("served") or {}
    bounds = results.get("model_bound") or {}
    for level in served.get("levels", []):
        rows.append(_row(MAIN, "mixed", level, results.get("limit"), bounds.get("mixed")))
    for name, run in (served.get("text_batching") or {}).items():
        if isinstance(run, dict):
            rows.append(_row(MAIN, f"text-only, TextEncoder {name.replace('_', ' ')}", run,
                             (results.get("short_texts_inprocess") or {}).get("limit"), bounds.get("short_texts")))
    scenarios = results.get("scenarios") or {}
    demo = scenarios.get("demo") or {}
    if demo.get("text_only"):
        rows.append(_row(DEMO, "text-only", demo["text_only"], *_refs(demo.get("inprocess"), "short_texts")))
    for level in demo.get("levels", []):
        rows.append(_row(DEMO, "mixed", level, *_refs(demo.get("inprocess"), "mixed")))
    front = scenarios.get("front_door") or {}
    for run in front.get("runs", []):
        for level in run["levels"]:
            rows.append(_row(FRONT_DOOR, "text-only", level, *_refs(front.get("inprocess"), "short_texts"),
                             driver_replicas=run["driver_replicas"]))
    return rows


def model_bound_rows(results: dict) -> list[dict]:
    """Per scenario and workload with a model-bound limit: it, (a), the best served level and its share of the limit."""
    bounds = []
    main = results.get("model_bound") or {}
    short_limit = (results.get("short_texts_inprocess") or {}).get("limit")
    bounds += [(MAIN, "mixed", main.get("mixed"), results.get("limit")),
               (MAIN, "text-only", main.get("short_texts"), short_limit)]
    for key, label in (("demo", DEMO), ("front_door", FRONT_DOOR)):
        inprocess = ((results.get("scenarios") or {}).get(key) or {}).get("inprocess") or {}
        for name, ref in inprocess.items():
            bounds.append((label, "text-only" if name == "short_texts" else name, ref.get("model_bound"),
                           ref.get("limit")))
    served = level_rows(results)
    out = []
    for scenario, workload, bound, limit in bounds:
        if not bound:
            continue
        rps = [r["rps"] for r in served if r["scenario"] == scenario and r["workload"].startswith(workload)
               and r["rps"] is not None]
        best = max(rps) if rps else None
        out.append({"scenario": scenario, "workload": workload, "bound": bound, "bound_rps": bound["throughput_rps"],
                    "limit_rps": round(work_rps(limit), 2) if limit else None,
                    "served_rps": round(best, 2) if best is not None else None,
                    "fraction": fraction_of_bound(best, bound)})
    return out


def _fmt(value, digits=2):
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def cpu_tables(results: dict) -> str:
    """One table per scenario: throughput and CPU ms per answered request of each role."""
    rows = level_rows(results)
    if not rows:
        return "No served level was measured."
    seen = {role for r in rows for role in r["by_role"]}
    roles = [r for r in ROLE_ORDER if r in seen] + sorted(seen - set(ROLE_ORDER))
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        out += [f"### {scenario}", "",
                "| workload | c | Driver replicas | rps | p99 ms | errors | " + " | ".join(roles)
                + " | all | outside the encoders | req/CPU-s | ÷ (a) req/CPU-s | ÷ model-bound rps |",
                "|---|---|---|---|---|---|" + "---|" * len(roles) + "---|---|---|---|---|"]
        for r in (r for r in rows if r["scenario"] == scenario):
            out.append(f"| {r['workload']} | {r['concurrency']} | {_fmt(r['driver_replicas'])} | {_fmt(r['rps'])} | "
                       f"{_fmt(r['p99_ms'], 0)} | {_fmt(r['errors'])} | "
                       + " | ".join(_fmt(r["by_role"].get(role)) for role in roles)
                       + f" | {_fmt(r['total_ms'])} | {_fmt(r['serving_ms'])} | {_fmt(r['per_cpu'])} | "
                       f"{_fmt(r['vs_limit_per_cpu'], 3)} | {_fmt(r['of_bound'], 3)} |")
        out.append("")
    return "\n".join(out)


def perf_analyzer_table(results: dict) -> str:
    """The front door measured by two load generators: ours on /v1/predict (JSON) and
    Triton's perf_analyzer on /v2 infer (binary tensors), same texts' kind, same concurrency."""
    front = (results.get("scenarios") or {}).get("front_door") or {}
    rows = []
    for run in front.get("runs", []):
        pa, ours = run.get("perf_analyzer"), (run.get("levels") or [{}])[0]
        if not pa:
            continue
        if "requests_per_s" not in pa:
            rows.append(f"| {run['driver_replicas']} | {_fmt(work_rps(ours))} | {_fmt(ours.get('p50_ms'))} | "
                        f"– | – | {pa.get('skipped') or 'failed (results.json)'} |")
            continue
        rows.append(f"| {run['driver_replicas']} | {_fmt(work_rps(ours))} | {_fmt(ours.get('p50_ms'))} | "
                    f"{_fmt(pa['requests_per_s'])} | {_fmt(pa['p50_ms'])} | c={pa['concurrency']} |")
    if not rows:
        return "perf_analyzer was not run."
    return "\n".join(["| Driver replicas | ours /v1 rps | ours p50 ms | perf_analyzer /v2 rps | perf_analyzer p50 ms | note |",
                      "|---|---|---|---|---|---|", *rows])


def long_recordings_table(results: dict) -> str:
    """Short requests' latency alone and beside 5-minute recordings, and the recordings' own."""
    scenario = (results.get("scenarios") or {}).get("long_recordings")
    if not scenario or "short_alone" not in scenario:
        return "Not measured." if not scenario else f"Not measured: {scenario.get('failed', scenario)}"[:700]
    alone, beside, long = scenario["short_alone"], scenario["short_with_long"], scenario["long"]
    return "\n".join([
        f"Bundle `{scenario['bundle'].get('name')}`; the recordings are synthetic (tones with a pitch contour), "
        f"{scenario['recording_seconds']:g} s each, one client sending them back to back.",
        "",
        "| short requests (c=4) | rps | p50 ms | p99 ms | errors |", "|---|---|---|---|---|",
        f"| alone | {_fmt(alone.get('throughput_rps'))} | {_fmt(alone.get('p50_ms'))} | {_fmt(alone.get('p99_ms'))} | "
        f"{_fmt(alone.get('errors'))} |",
        f"| beside the recordings | {_fmt(beside.get('throughput_rps'))} | {_fmt(beside.get('p50_ms'))} | "
        f"{_fmt(beside.get('p99_ms'))} | {_fmt(beside.get('errors'))} |",
        "",
        f"Recordings answered: {long['answered']} of {long['sent']}; time to the timeline p50 "
        f"{_fmt(long.get('p50_ms'))} ms, max {_fmt(long.get('max_ms'))} ms.",
    ])


def _stage(bound: dict, stage: str) -> str:
    st = bound["stages"].get(stage)
    if not st:
        return "–"
    per_item = 1000.0 * st["seconds"] / st["items"] if st.get("items") else None
    return f"batch {st['best_batch_size']}, {st['best_threads']} thr: {_fmt(per_item)} ms/item"


def model_bound_table(results: dict) -> str:
    rows = model_bound_rows(results)
    if not rows:
        return "The model-bound limit was not measured."
    out = ["| scenario | workload | device | text encoder | audio encoder | fusion head | model-bound rps | "
           "core-ms/request | (a) in-process rps | best served rps | served ÷ model-bound |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bound"]
        out.append(f"| {r['scenario']} | {r['workload']} | {b.get('device')} | {_stage(b, 'text')} | "
                   f"{_stage(b, 'audio')} | {_stage(b, 'fusion')} | {_fmt(r['bound_rps'])} | "
                   f"{_fmt(b.get('core_ms_per_request'))} | {_fmt(r['limit_rps'])} | {_fmt(r['served_rps'])} | "
                   f"{_fmt(r['fraction'], 3)} |")
    return "\n".join(out)


def scenario_notes(results: dict) -> str:
    """What each extra scenario was, or why it is missing."""
    notes = []
    for key, label in (("demo", DEMO), ("front_door", FRONT_DOOR)):
        scenario = (results.get("scenarios") or {}).get(key)
        if scenario is None:
            notes.append(f"- **{label}**: not run (skipped on the command line).")
        elif "skipped" in scenario:
            notes.append(f"- **{label}**: {scenario['skipped']}")
        elif "failed" in scenario:
            # The end of the error says what failed (a traceback's last lines); results.json has it all.
            notes.append(f"- **{label}**: failed: `...{scenario['failed'][-600:]}`")
        else:
            bundle = scenario.get("bundle", {})
            notes.append(f"- **{label}**: bundle `{bundle.get('name')}` ({bundle.get('path')}); served system "
                         f"started in {scenario.get('startup_s')} s; processes killed after stop: "
                         f"{scenario.get('killed_after_stop_roles', scenario.get('killed_after_stop'))}.")
    return "\n".join(notes)
