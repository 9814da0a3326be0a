"""The embedded demo: the paper's story end to end on a CPU in minutes, with no downloads.

`python -m cir.fit experiments/demo.yaml` runs a grid (cir.grid) whose cells
are TAT's training seeds: it generates the compositional benchmark, pretrains a
tiny CLIP from scratch once (the stand-in for OpenAI CLIP), evaluates Slerp
zero-shot, runs TAT per seed (its anchor ablations and supervised fine-tuning
optional, one key each), and its
`report: demo` (cir.demo.results) writes results.md, alpha_sweep.png and a
TensorBoard summary. Every stage is a call of a real CLI with its own YAML in
experiments/; rerunning skips what is done.
"""
