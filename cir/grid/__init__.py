"""Grids of runs: `python -m cir.grid CONFIG [key=value ...] [--slurm] [--dry-run]`.

A grid names stages (cir.fit / cir.evaluate / cir.submit calls with their
YAML), axes whose product gives the cells, and what each stage reads from
the one before it. Cells run here one after the other, or go to SLURM as
jobs with dependencies; finished calls are skipped on rerun either way.
"""
