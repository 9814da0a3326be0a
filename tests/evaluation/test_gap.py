"""cir.evaluation.gap: the pairs file, the gap over DDP shares, and cir.evaluate's eval.gap_pairs."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cir import evaluate
from cir.config import run_cli
from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks import AnnotationError
from cir.evaluation.gap import measure_gap, read_pairs
from cir.modality_gap import modality_gap
from cir.models import Backbone, create_backbone

DEFAULTS = str(Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml")  # the config a command needs first

GAP_KEYS = {"modality_gap/gap", "modality_gap/pair_cosine", "modality_gap/pairs"}


def write_pairs(root: Path, count: int = 5) -> Path:
    """A pairs file in its own folder, naming `count` of the fixture's val images relative to it."""
    images = sorted((root / "dev").glob("*.png"))[:count]
    path = root / "gap" / "pairs.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"image": f"../dev/{image.name}", "caption": f"a photo of thing {i}"}) + "\n"
                            for i, image in enumerate(images)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    return create_backbone("cir-tiny", "none").eval()


def test_pairs_are_read_relative_to_the_file(cirr_root):
    path = write_pairs(cirr_root)
    pairs = read_pairs(path)
    assert [(p.resolve(), c) for p, c in pairs] == [
        (image.resolve(), f"a photo of thing {i}") for i, image in enumerate(sorted((cirr_root / "dev").glob("*.png"))[:5])
    ]


@pytest.mark.parametrize(
    "line, error, message",
    [
        ("{not json", AnnotationError, "line 2: not valid JSON"),
        ('{"image": "../dev/x.png"}', AnnotationError, "line 2: missing field 'caption'"),
        ('["../dev/x.png", "a caption"]', AnnotationError, "line 2: should be a JSON object"),
        ('{"image": "../dev/none.png", "caption": "a caption"}', FileNotFoundError, "line 2: image .*none.png not found"),
    ],
)
def test_a_bad_line_names_the_file_and_line(cirr_root, line, error, message):
    path = write_pairs(cirr_root, 1)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(error, match=f"{path}: {message}"):
        read_pairs(path)


def test_a_missing_or_empty_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none.jsonl'}: image-caption pairs file not found"):
        read_pairs(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(AnnotationError, match=f"{tmp_path / 'empty.jsonl'}: no image-caption pairs"):
        read_pairs(tmp_path / "empty.jsonl")


def direct_gap(backbone: Backbone, pairs: list[tuple[Path, str]]) -> dict[str, float]:
    """All pairs encoded in one batch, straight through modality_gap."""
    with torch.no_grad():
        image = backbone.encode_image(torch.stack([backbone.preprocess_val(load_rgb(p)) for p, _ in pairs]))
        text = backbone.encode_text(backbone.tokenize([c for _, c in pairs]))
    return {key: value.item() for key, value in modality_gap(image, text).items()}


def test_batches_add_up_to_the_gap_of_all_pairs(cirr_root, backbone):
    pairs = read_pairs(write_pairs(cirr_root))
    got = measure_gap(backbone, pairs, batch_size=2)
    assert got == pytest.approx({**direct_gap(backbone, pairs), "pairs": 5}, rel=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        measure_gap(backbone, [])


def _ddp_worker(rank: int, world_size: int, init_file: str, backbone: Backbone, pairs: list, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        encoded: list[int] = []
        encode_image = backbone.encode_image

        def counted(pixels: torch.Tensor) -> torch.Tensor:
            encoded.append(pixels.shape[0])
            return encode_image(pixels)

        backbone.encode_image = counted
        results = [measure_gap(backbone, pairs, batch_size=2), measure_gap(backbone, pairs[:1], batch_size=2)]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"results": results, "encoded": sum(encoded)}))
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_encode_their_shares_and_get_the_one_process_gap(cirr_root, backbone, tmp_path):
    pairs = read_pairs(write_pairs(cirr_root))
    # fork, not spawn: a spawned child re-imports torch and open_clip (seconds of CPU on a small machine)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), backbone, pairs, str(tmp_path)),
                       nprocs=2, join=True, start_method="fork")
    expected = [measure_gap(backbone, pairs), measure_gap(backbone, pairs[:1])]
    got = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [g["encoded"] for g in got] == [2 + 0, 3 + 1]  # 5 pairs as 2 + 3; 1 pair as 0 + 1
    for rank in range(2):
        for result, single in zip(got[rank]["results"], expected):
            assert result == pytest.approx(single, rel=1e-5), rank


def evaluate_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["model.name=cir-tiny", "model.pretrained=none", f"data.root={root}", f"output_dir={out}", "eval.cache_dir=null",
            "data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "eval.examples=0",
            "eval.alphas=[0.9]", *extra]


def test_evaluate_writes_the_gap_into_metrics_and_tensorboard(cirr_root, tmp_path, capsys):
    pairs_file = write_pairs(cirr_root)
    evaluate.main(None, evaluate_args(cirr_root, tmp_path, f"eval.gap_pairs={pairs_file}"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    L.seed_everything(0, verbose=False)  # the backbone cir.evaluate built
    expected = direct_gap(create_backbone("cir-tiny", "none").eval(), read_pairs(pairs_file))
    assert {key: metrics[key] for key in GAP_KEYS} == pytest.approx(
        {"modality_gap/gap": expected["gap"], "modality_gap/pair_cosine": expected["pair_cosine"], "modality_gap/pairs": 5},
        rel=1e-5,
    )
    assert "cirr/val/slerp_a0.9/R@1" in metrics
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert GAP_KEYS <= set(events.Tags()["scalars"])
    assert "modality_gap/gap: " in capsys.readouterr().out


def test_a_missing_pairs_file_is_one_line_naming_the_key_and_the_file(tmp_path, capsys):
    missing = tmp_path / "none.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, [DEFAULTS, *evaluate_args(tmp_path, tmp_path / "out", f"eval.gap_pairs={missing}")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "eval.gap_pairs" in err.splitlines()[0] and str(missing) in err.splitlines()[0] and "Traceback" not in err
