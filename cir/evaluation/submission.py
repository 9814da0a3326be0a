"""Official test-server files for CIRR and CIRCO, validated before they are written.

Each builder turns ranked gallery rows into the server's JSON; `validate`
checks what the servers check (every query present, ids unique and from the
gallery, the right length, the reference absent where the protocol excludes it:
CIRR always, whatever eval.exclude_reference says; CIRCO only if eval.exclude_reference=true) so a bad file never
leaves this machine.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.data.retrieval_benchmarks.cirr import CIRR_VERSION
from cir.evaluation.features import excludes_reference
from cir.io import write_json

CIRR_RECALL_K = 50
CIRR_SUBSET_K = 3
CIRCO_K = 50


class SubmissionError(ValueError):
    """A submission that the test server would reject or mis-score."""


def _names(bench: CIRBenchmark, rows: list[int]) -> list[str]:
    return [bench.gallery[r] for r in rows if r >= 0]


def cirr_files(bench: CIRBenchmark, top: torch.Tensor, subset: torch.Tensor) -> dict[str, dict]:
    """{"recall": {...}, "recall_subset": {...}} keyed by pairid, as the CIRR server expects."""
    recall: dict = {"version": CIRR_VERSION, "metric": "recall"}
    recall_subset: dict = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for query, ranked, ranked_subset in zip(bench.queries, top.tolist(), subset.tolist()):
        recall[query.query_id] = _names(bench, ranked[:CIRR_RECALL_K])
        recall_subset[query.query_id] = _names(bench, ranked_subset[:CIRR_SUBSET_K])
    return {"recall": recall, "recall_subset": recall_subset}


def circo_file(bench: CIRBenchmark, top: torch.Tensor) -> dict[str, list[int]]:
    """{query id: [top-50 COCO image ids]} with integer ids, as the CIRCO server expects."""
    return {q.query_id: [int(i) for i in _names(bench, ranked[:CIRCO_K])] for q, ranked in zip(bench.queries, top.tolist())}


def _check_query(bench: CIRBenchmark, qid: str, ranked: list, k: int, allowed: set[str]) -> None:
    if len(ranked) != k:
        raise SubmissionError(f"{bench.name}/{bench.split} query {qid}: {len(ranked)} ids, expected {k}")
    if len(set(ranked)) != len(ranked):
        raise SubmissionError(f"{bench.name}/{bench.split} query {qid}: repeated ids")
    outside = [r for r in ranked if str(r) not in allowed]
    if outside:
        raise SubmissionError(f"{bench.name}/{bench.split} query {qid}: ids not allowed here: {outside[:3]}")


def validate(
    bench: CIRBenchmark,
    payload: dict,
    k: int,
    metadata: dict[str, str],
    subset: bool = False,
    exclude_reference: bool | None = None,
) -> None:
    """Every query exactly once, k unique ids each, from the gallery (or img_set).

    The reference is refused where it is excluded: from every CIRR list always (the server counts it as a wrong
    answer in a top-50 slot, and the img_set ranking is of the other members), from other gallery lists per
    `exclude_reference` (None: the benchmark's official rule).
    """
    exclude = subset or bench.name == "cirr" or excludes_reference(bench.name, exclude_reference)
    for key, value in metadata.items():
        if payload.get(key) != value:
            raise SubmissionError(f"{bench.name}/{bench.split}: field {key!r} must be {value!r}")
    entries = {k_: v for k_, v in payload.items() if k_ not in metadata}
    expected = {q.query_id for q in bench.queries}
    if set(entries) != expected:
        missing, extra = expected - set(entries), set(entries) - expected
        raise SubmissionError(
            f"{bench.name}/{bench.split}: {len(missing)} queries missing, {len(extra)} unexpected"
            f" (e.g. {sorted(missing or extra)[:3]})"
        )
    gallery = set(bench.gallery)
    for query in bench.queries:
        allowed = set(query.subset) if subset else gallery
        if exclude:
            allowed = allowed - {query.reference}
        want = min(k, len(allowed))
        _check_query(bench, query.query_id, entries[query.query_id], want, allowed)


def write_submission(
    bench: CIRBenchmark,
    top: torch.Tensor,
    subset: torch.Tensor | None,
    out_dir: Path,
    exclude_reference: bool | None = None,
) -> list[Path]:
    """Build, validate (reference rule as `validate`), then write atomically; returns the written paths."""
    out_dir = Path(out_dir)
    if bench.name == "cirr":
        if subset is None:
            raise ValueError("CIRR submissions need the img_set ranking (recall_subset)")
        files = cirr_files(bench, top, subset)
        validate(bench, files["recall"], CIRR_RECALL_K, {"version": CIRR_VERSION, "metric": "recall"},
                 exclude_reference=exclude_reference)
        validate(bench, files["recall_subset"], CIRR_SUBSET_K, {"version": CIRR_VERSION, "metric": "recall_subset"}, True)
        paths = {
            "recall": out_dir / f"cirr_{bench.split}_recall_submission.json",
            "recall_subset": out_dir / f"cirr_{bench.split}_recall_subset_submission.json",
        }
        for metric, path in paths.items():
            write_json(path, files[metric])
        return list(paths.values())
    if bench.name == "circo":
        payload = circo_file(bench, top)
        validate(bench, payload, CIRCO_K, {}, exclude_reference=exclude_reference)
        path = out_dir / f"circo_{bench.split}_submission.json"
        write_json(path, payload)
        return [path]
    raise ValueError(f"{bench.name} has no official test server (only cirr and circo do); evaluate its val split")
