"""Benchmarks: rollout throughput (`jaxalign.bench.rollout`) and the train step."""
