"""Grids of runs: `python -m cir.grid CONFIG [key=value ...] [--slurm] [--dry-run]`.

A grid names stages (cir.fit / cir.evaluate / cir.submit / cir.data.synth
calls with their YAML), axes whose product gives the cells, and what each
stage reads from the one before it; shared stages run once before the cells,
and a report across the cells can follow them. Cells run here one after the other, or go to SLURM as
jobs with dependencies; finished calls are skipped on rerun either way.
"""
