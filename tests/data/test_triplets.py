"""Training triplets from the official layouts: which files, which captions, missing images, batches, DDP split,
random draws that are a function of (seed, epoch, triplet), and the resumed epoch.

Expected triplets are read straight from the annotation JSON; images are the
fixtures' solid colours, so a tensor tells which file it came from.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision.transforms import functional as TF

from cir.data.triplets import TripletDataModule, TripletDataset, load_triplets


def to_tensor(image) -> torch.Tensor:
    return TF.to_tensor(image)


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    """Each caption as its length and first character code: enough to tell captions apart."""
    return torch.tensor([[len(t), ord(t[0])] for t in texts])


def cirr_expected(root: Path, split: str, image_root: Path | None = None) -> list[tuple[str, Path, str, Path]]:
    paths = json.loads((root / "cirr" / "image_splits" / f"split.rc2.{split}.json").read_text())
    base = image_root or root
    return [
        (str(e["pairid"]), base / paths[e["reference"]], e["caption"], base / paths[e["target_hard"]])
        for e in json.loads((root / "cirr" / "captions" / f"cap.rc2.{split}.json").read_text())
    ]


def as_tuples(triplets) -> list[tuple[str, Path, str, Path]]:
    return [(t.query_id, t.reference, t.caption, t.target) for t in triplets]


def test_cirr_triplets_are_the_caption_file_entries(cirr_root):
    assert as_tuples(load_triplets("cirr", cirr_root, "val")) == cirr_expected(cirr_root, "val")


def test_cirr_images_apart_from_annotations(cirr_root, tmp_path):
    images = tmp_path / "img_raw"
    shutil.move(str(cirr_root / "dev"), str(images / "dev"))
    triplets = load_triplets("cirr", cirr_root, "val", image_root=images)
    assert as_tuples(triplets) == cirr_expected(cirr_root, "val", images)


def test_fashioniq_categories_and_joined_captions(fashioniq_root):
    triplets = load_triplets("fashioniq", fashioniq_root, "val", categories=["dress", "toptee"])
    expected = []
    for category in ("dress", "toptee"):
        for i, e in enumerate(json.loads((fashioniq_root / "captions" / f"cap.{category}.val.json").read_text())):
            first, second = (c.strip(".?, ") for c in e["captions"])
            images = fashioniq_root / "images"
            expected.append((f"{category}-{i}", images / f"{e['candidate']}.png", f"{first} and {second}",
                             images / f"{e['target']}.png"))
    assert as_tuples(triplets) == expected


def test_an_unlabelled_split_is_refused(cirr_root):
    with pytest.raises(ValueError, match="no target image.*labelled split"):
        load_triplets("cirr", cirr_root, "test1")


def test_missing_images_are_named(cirr_root):
    _, _, _, target = cirr_expected(cirr_root, "val")[3]
    target.unlink()
    with pytest.raises(FileNotFoundError, match="1 image file") as err:
        load_triplets("cirr", cirr_root, "val")
    assert str(target) in str(err.value)


def test_items_are_reference_tokens_target(cirr_root, color_of):
    triplets = load_triplets("cirr", cirr_root, "val")
    dataset = TripletDataset(triplets, to_tensor, fake_tokenize)
    entry = json.loads((cirr_root / "cirr" / "captions" / "cap.rc2.val.json").read_text())[5]
    reference, tokens, target = dataset[5]
    assert torch.allclose(reference[:, 0, 0] * 255, torch.tensor(color_of(entry["reference"]), dtype=torch.float))
    assert torch.allclose(target[:, 0, 0] * 255, torch.tensor(color_of(entry["target_hard"]), dtype=torch.float))
    assert tokens.tolist() == [len(entry["caption"]), ord(entry["caption"][0])]


def _row_ids(dataset: TripletDataset, loader) -> list[list[int]]:
    """Which triplet each batch row is, recovered from its (reference, target) colours."""
    key = {}
    for i in range(len(dataset)):
        reference, _, target = dataset[i]
        key[(tuple(reference[:, 0, 0].tolist()), tuple(target[:, 0, 0].tolist()))] = i
    return [[key[(tuple(r[:, 0, 0].tolist()), tuple(t[:, 0, 0].tolist()))] for r, t in zip(refs, targets)]
            for refs, _, targets in loader]


def test_loader_shuffles_full_batches_only(cirr_root):
    dataset = TripletDataset(load_triplets("cirr", cirr_root, "val"), to_tensor, fake_tokenize)
    assert len(dataset) == 40
    loader = TripletDataModule(dataset, batch_size=16, num_workers=0).train_dataloader()
    torch.manual_seed(0)
    rows = _row_ids(dataset, loader)
    assert [len(b) for b in rows] == [16, 16]  # 8 left over are dropped, not a short batch
    flat = [i for b in rows for i in b]
    assert len(set(flat)) == 32 and flat != sorted(flat)
    references, tokens, targets = next(iter(loader))
    assert references.shape == targets.shape == (16, 3, 8, 8) and tokens.shape == (16, 2)


def loader_on(dataset: TripletDataset, batch_size: int, rank: int = 0, world: int = 1, **resume_at: int):
    """The DataModule's training loader as rank `rank` of `world` sees it, resumed at `resume_at` when given."""
    module = TripletDataModule(dataset, batch_size=batch_size, num_workers=0, seed=0)
    module.trainer = SimpleNamespace(world_size=world, global_rank=rank,
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
    module.load_state_dict(resume_at)
    return module.train_dataloader()


def test_ddp_ranks_get_disjoint_shares_and_the_same_batch_count(cirr_root):
    """Each rank draws its share of one (seed, epoch) order: a DistributedSampler, which Lightning keeps under DDP."""
    dataset = TripletDataset(load_triplets("cirr", cirr_root, "val"), to_tensor, fake_tokenize)
    loaders = [loader_on(dataset, 8, rank, 3) for rank in range(3)]
    assert all(isinstance(loader.sampler, DistributedSampler) for loader in loaders)
    shares = [_row_ids(dataset, loader) for loader in loaders]
    assert [len(s) for s in shares] == [1, 1, 1]  # 14 each (40 padded to 42), one full batch of 8
    flat = [i for s in shares for b in s for i in b]
    assert all(len(b) == 8 for s in shares for b in s) and len(set(flat)) == len(flat) == 24


def test_the_order_is_a_function_of_seed_and_epoch_and_a_resumed_epoch_starts_after_the_trained_batches(cirr_root):
    dataset = TripletDataset(load_triplets("cirr", cirr_root, "val"), to_tensor, fake_tokenize)
    loader = loader_on(dataset, 8)
    torch.manual_seed(0)
    epoch0 = _row_ids(dataset, loader)
    torch.manual_seed(1)  # the global generator's history does not matter
    assert _row_ids(dataset, loader) == epoch0
    loader.sampler.set_epoch(1)
    epoch1 = _row_ids(dataset, loader)
    assert epoch1 != epoch0
    assert _row_ids(dataset, loader_on(dataset, 8, epoch=1, batches=3)) == epoch1[3:]
    assert _row_ids(dataset, loader_on(dataset, 8, epoch=0, batches=0)) == epoch0


def test_a_triplets_crops_are_a_function_of_its_draw_not_of_the_generators_history(cirr_root):
    """The random transform draws from torch's and Python's generators, seeded by the sampler's (seed, epoch, index)."""
    def jitter(image) -> torch.Tensor:
        return to_tensor(image) + torch.rand(1) + random.random()

    dataset = TripletDataset(load_triplets("cirr", cirr_root, "val"), jitter, fake_tokenize)
    sampler = loader_on(dataset, 8).sampler
    draws = list(sampler)
    first = dataset[draws[0]]
    torch.manual_seed(5), random.seed(5)
    assert all(torch.equal(a, b) for a, b in zip(dataset[draws[0]], first))
    state = torch.get_rng_state()
    assert not torch.equal(dataset[draws[1]][0], first[0])
    assert torch.equal(torch.get_rng_state(), state)  # the model's randomness (dropout) is left as it was
    sampler.set_epoch(1)
    again = next(d for d in sampler if d.index == draws[0].index)
    assert not torch.equal(dataset[again][0], first[0])  # a new epoch, new crops


def test_too_few_triplets_for_a_batch_is_a_clear_error(cirr_root):
    dataset = TripletDataset(load_triplets("cirr", cirr_root, "val"), to_tensor, fake_tokenize)
    with pytest.raises(ValueError, match="40 training triplets fill no batch of 64"):
        TripletDataModule(dataset, batch_size=64, num_workers=0).train_dataloader()
