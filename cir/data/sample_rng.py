"""Random draws of the data path as a function of (seed, epoch, sample), never of what ran before.

An augmentation draws from torch's (and Python's) global generators. Left alone, a
sample's crop then depends on every draw made before it in that process: a DataLoader
worker's seed, the samples before it, the batches a resumed run passed over. Seeding
the generators per sample from where the sample sits in the epoch (seed, epoch, rank,
the worker part that makes it, its place in that part's stream) makes the crop the
same whenever and wherever that sample is made; the generators' state is put back
afterwards, so a loader in the training process (num_workers=0) leaves the model's
randomness (dropout) as it was.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def sample_seed(seed: int, epoch: int, rank: int, part: int, index: int) -> int:
    """A 63-bit seed for one sample: a hash of its place, so nearby places get unrelated streams (about 1 us)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{rank}:{part}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded(seed: int, *, python: bool = True) -> Iterator[None]:
    """torch's CPU generator (and, with `python`, Python's `random`) seeded with `seed` inside, restored on exit.

    Through the generator object, not torch.manual_seed, which also seeds every accelerator (about 250 us);
    Python's generator costs about 25 us to seed and restore, so transforms that draw only from torch skip it.
    """
    generator = torch.default_generator
    torch_state = generator.get_state()
    python_state = random.getstate() if python else None
    generator.manual_seed(seed)
    if python:
        random.seed(seed)
    try:
        yield
    finally:
        generator.set_state(torch_state)
        if python_state is not None:
            random.setstate(python_state)
