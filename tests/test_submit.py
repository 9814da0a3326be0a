"""Official test-server files: written from the CLI on the fixture layouts, validated before writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cir import submit
from cir.config import run_cli
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation.submission import (
    SubmissionError,
    circo_file,
    cirr_files,
    validate,
    write_submission,
)

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first


def run(root: Path, out: Path, *extra: str) -> list[Path]:
    return submit.main(None, ["model.name=cir-tiny", "model.pretrained=none", f"data.root={root}", f"output_dir={out}",
                              "eval.cache_dir=null", "data.num_workers=0", "trainer.accelerator=cpu",
                              "trainer.enable_progress_bar=false", *extra])


def test_cirr_test1_files(cirr_root, tmp_path):
    paths = run(cirr_root, tmp_path)
    bench = load_benchmarks("cirr", cirr_root, "test1")[0]
    recall = json.loads((tmp_path / "cirr_test1_recall_submission.json").read_text())
    subset = json.loads((tmp_path / "cirr_test1_recall_subset_submission.json").read_text())
    assert sorted(paths) == sorted([tmp_path / "cirr_test1_recall_submission.json",
                                    tmp_path / "cirr_test1_recall_subset_submission.json"])
    assert recall["version"] == "rc2" and recall["metric"] == "recall"
    assert subset["version"] == "rc2" and subset["metric"] == "recall_subset"
    assert set(recall) - {"version", "metric"} == {q.query_id for q in bench.queries}
    gallery = set(bench.gallery)
    for q in bench.queries:
        names = recall[q.query_id]
        assert len(names) == min(50, len(gallery) - 1) and len(set(names)) == len(names)
        assert q.reference not in names and set(names) <= gallery
        top3 = subset[q.query_id]
        assert len(top3) == 3 and set(top3) <= set(q.subset) - {q.reference}


@pytest.mark.parametrize("split", ["test", "val"])
def test_circo_files_rank_the_whole_gallery(circo_root, tmp_path, split, capsys):
    # CIRCO's protocol keeps the reference a candidate, so image only ranks it first (cosine 1 with itself)
    run(circo_root, tmp_path, "data.name=circo", f"submit.split={split}", "submit.method=image")
    assert "reference image: circo kept in the gallery (official)" in capsys.readouterr().out
    bench = load_benchmarks("circo", circo_root, split)[0]
    payload = json.loads((tmp_path / f"circo_{split}_submission.json").read_text())
    assert set(payload) == {q.query_id for q in bench.queries}
    for q in bench.queries:
        ids = payload[q.query_id]
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
        assert len(ids) == min(50, len(bench.gallery)) and ids[0] == int(q.reference)


def test_circo_files_without_the_reference_when_asked(circo_root, tmp_path):
    run(circo_root, tmp_path, "data.name=circo", "submit.method=image", "eval.exclude_reference=true")
    bench = load_benchmarks("circo", circo_root, "test")[0]
    payload = json.loads((tmp_path / "circo_test_submission.json").read_text())
    for q in bench.queries:
        ids = payload[q.query_id]
        assert len(ids) == min(50, len(bench.gallery) - 1) and int(q.reference) not in ids


def test_fashioniq_has_no_test_server(fashioniq_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(submit.main, [DEFAULTS, "model.name=cir-tiny", "model.pretrained=none", "data.name=fashioniq",
                              f"data.root={fashioniq_root}"])
    assert "no official test server" in capsys.readouterr().err


def _ranked(bench, k: int) -> torch.Tensor:
    """A valid ranking: the gallery in order, each query's reference removed."""
    rows = []
    for q in bench.queries:
        ranked = [i for i, g in enumerate(bench.gallery) if g != q.reference][:k]
        rows.append(ranked)
    return torch.tensor(rows)


def test_validator_rejects_what_the_server_would(cirr_root):
    bench = load_benchmarks("cirr", cirr_root, "test1")[0]
    subset = torch.tensor([[bench.gallery.index(m) for m in q.subset if m != q.reference] for q in bench.queries])
    files = cirr_files(bench, _ranked(bench, 50), subset)
    meta = {"version": "rc2", "metric": "recall"}
    validate(bench, files["recall"], 50, meta)
    first = bench.queries[0]

    missing = dict(files["recall"])
    del missing[first.query_id]
    with pytest.raises(SubmissionError, match="missing"):
        validate(bench, missing, 50, meta)

    repeated = dict(files["recall"])
    repeated[first.query_id] = [repeated[first.query_id][0]] * 50
    with pytest.raises(SubmissionError, match="repeated"):
        validate(bench, repeated, 50, meta)

    with_reference = dict(files["recall"])
    with_reference[first.query_id] = [first.reference] + with_reference[first.query_id][:49]
    with pytest.raises(SubmissionError, match="not allowed"):
        validate(bench, with_reference, 50, meta)
    with pytest.raises(SubmissionError, match="not allowed"):  # a CIRR list never holds it, whatever the key says
        validate(bench, with_reference, 50, meta, exclude_reference=False)

    with pytest.raises(SubmissionError, match="metric"):
        validate(bench, {**files["recall"], "metric": "recall_subset"}, 50, meta)

    subset_meta = {"version": "rc2", "metric": "recall_subset"}
    with_reference = dict(files["recall_subset"])
    with_reference[first.query_id] = [first.reference] + with_reference[first.query_id][:2]
    with pytest.raises(SubmissionError, match="not allowed"):  # Recall_subset never ranks the reference
        validate(bench, with_reference, 3, subset_meta, subset=True, exclude_reference=False)


def test_circo_validator_accepts_the_reference_unless_excluded(circo_root):
    bench = load_benchmarks("circo", circo_root, "test")[0]
    k = min(50, len(bench.gallery))
    payload = {q.query_id: [int(q.reference)] + [int(g) for g in bench.gallery if g != q.reference][: k - 1]
               for q in bench.queries}
    validate(bench, payload, 50, {})
    with pytest.raises(SubmissionError):
        validate(bench, payload, 50, {}, exclude_reference=True)


def test_writer_refuses_an_invalid_ranking_and_writes_nothing(circo_root, tmp_path):
    bench = load_benchmarks("circo", circo_root, "test")[0]
    top = _ranked(bench, 50)
    top[0, 1] = top[0, 0]
    with pytest.raises(SubmissionError):
        write_submission(bench, top, None, tmp_path / "out", exclude_reference=True)
    assert not (tmp_path / "out").exists()
    assert len(circo_file(bench, _ranked(bench, 50))) == len(bench.queries)


def test_cirr_refuses_exclude_reference_false_in_one_line(cirr_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(submit.main, [DEFAULTS, "model.name=cir-tiny", "model.pretrained=none", f"data.root={cirr_root}",
                              f"output_dir={tmp_path}", "eval.exclude_reference=false"])
    err = capsys.readouterr().err
    assert "eval.exclude_reference" in err and "Traceback" not in err and not list(tmp_path.glob("*.json"))
