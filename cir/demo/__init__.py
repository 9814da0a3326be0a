"""The embedded demo: the paper's story end to end on a CPU in minutes, with no downloads.

`python -m cir.fit experiments/demo.yaml` generates the compositional benchmark,
pretrains a tiny CLIP from scratch (the stand-in for OpenAI CLIP), evaluates
Slerp zero-shot, runs TAT and its anchor ablations, fine-tunes supervised, and
writes results.md, alpha_sweep.png and TensorBoard runs. Every stage is a call
of a real CLI with its own YAML in experiments/; rerunning skips what is done.
"""

from cir.demo.pipeline import main

__all__ = ["main"]
