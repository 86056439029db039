"""Benchmark harness: in-process limit (a), the seed's sequential way (b), and the
served application (c), on the same models and inputs. Run ``python -m benchmarks.run``
(``sentiment-bench``).

run (the phases) · workload (inputs) · inprocess, bundles ((a), (b)) · model_bound (the
forward passes alone) · served_config, served_system, closed_loop, overhead, profiling
((c)) · scenarios (the demo bundle, the front door) · cpu_cost (CPU per request by
process role) · handle_load, latency_probe (standalone probes) · latency_stats, progress
· targets, plots, fingerprint, bench_report, scenario_report (the report).
Process plumbing (ports, the private Ray head, samplers) lives in ``harness``.
"""
