"""The benchmark suite: ``python -m benchmarks`` runs scenarios S1-S7 (see benchmarks/README.md).

Micro-benchmarks run on their own: ``python -m benchmarks.rules_bench``, ``python -m
benchmarks.otlp_json_bench``; ``python -m benchmarks.ingest`` and ``python -m benchmarks.ablation``
drive the real service like the suite does.
"""
