"""A generated compositional benchmark: drawn scenes, image-text shards and a CIRR-layout CIR benchmark.

It lets the whole pipeline (pretraining, TAT, Slerp evaluation, supervised
fine-tuning) run end to end on a CPU in minutes, with a known answer to every
query. `python -m cir.data.synth --out DIR --seed N` writes it.
"""

from cir.data.synth.captions import vocabulary
from cir.data.synth.writer import SynthSizes, generate, shard_urls

__all__ = ["SynthSizes", "generate", "shard_urls", "vocabulary"]
