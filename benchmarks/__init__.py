"""Benchmark harness: in-process limit (a), the seed's sequential way (b), and the
served application (c), on the same models and inputs. Run ``python -m benchmarks.run``.
"""
