"""Datasets: image-text shards for tuning, CIR benchmarks in their official layouts."""
