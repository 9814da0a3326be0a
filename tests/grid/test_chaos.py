"""Chaos: a two-cell grid (fit, then an evaluation that exports features) whose calls run as child processes (each
fit with a DataLoader worker), killed again and again with SIGKILL or SIGTERM (the grid and every process under
it) at seeded moments, in the middle of checkpoint and output writes and between them, then rerun until it
finishes, ends with every cell's metrics.json, export and features equal to an uninterrupted run's; after every
kill, no folder is marked done without every output it names.

The moments are events of chaos_hook/sitecustomize.py: each atomic write (os.replace) of any process of the
grid, just before its rename (the new file complete beside its target) and just after it. The uninterrupted run
traces its events; each kill is drawn (seeded) from the events still ahead of the work done so far, a share of
them at a time, so the kills spread over the whole grid, and the schedule must cover a kill inside a checkpoint,
a metrics.json and a features npz write. Waits are bounded (pidfds, no sleeps).
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_grid import make_benchmark, write_grid

from cir import completion
from cir.grid.plan import Grid

# about 5 minutes on a 2-core machine at load 1 (docs/guarantees.md); the timeout leaves room for a loaded CI box
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]
HOOK = Path(__file__).resolve().parent / "chaos_hook"
SEED, KILLS, CELLS = 27, 8, ("seed-0", "seed-1")
# Kills that must land inside a write (before its rename): a checkpoint, an evaluation's metrics and its features.
INSIDE = {"checkpoint": ".ckpt", "metrics.json": "/metrics.json", "features": ".npz"}
ATTEMPT_TIMEOUT = 600  # seconds one grid run may take
STOP_TIMEOUT = 120  # seconds the processes a kill signalled may take to end (SIGTERM: a checkpoint first)
Event = tuple[str, str]  # (before | after, the file renamed into place)


def wait_gone(pids: list[int]) -> None:
    """Block until every pid has ended (pidfds: no polling), STOP_TIMEOUT seconds at most."""
    poller, fds = select.poll(), []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            continue
        poller.register(fds[-1], select.POLLIN)
    try:
        for _ in fds:
            ready = poller.poll(STOP_TIMEOUT * 1000)
            assert ready, f"processes {pids} still running {STOP_TIMEOUT} s after the kill"
            for fd, _ in ready:
                poller.unregister(fd)
    finally:
        for fd in fds:
            os.close(fd)


def run_grid(grid_file: Path, env: dict[str, str], output: Path) -> int:
    """One run of the grid in a session of its own; its exit status."""
    with open(output, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cir.grid", str(grid_file)], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return proc.wait(timeout=ATTEMPT_TIMEOUT)


def traced(trace: Path, under: Path) -> list[Event]:
    """The events a run traced, of files under `under`."""
    lines = trace.read_text().splitlines() if trace.exists() else []
    events = (tuple(line.split("\t", 1)) for line in lines)
    return [(where, target) for where, target in events if target.startswith(str(under))]


def kind(event: Event) -> str | None:
    """Which write a kill at this event lands inside, of those the schedule must cover."""
    where, target = event
    return next((name for name, end in INSIDE.items() if where == "before" and target.endswith(end)), None)


def next_kill(moments: list[Event], progress: int, kills_left: int, uncovered: set[str], rng: random.Random) -> Event:
    """An event among the next share of those after `progress` (an index into `moments`, the uninterrupted run's
    events in the order they first happen), preferring one inside a write kind not yet covered."""
    ahead = moments[progress + 1:]
    window = ahead[:max(1, 2 * len(ahead) // kills_left)]
    preferred = [m for m in window if kind(m) in uncovered]
    return rng.choice(preferred or window)


def check_done_folders(root: Path) -> None:
    """Every folder whose record says done holds every output the record names, at the size it names."""
    for record_path in root.rglob(completion.RECORD):
        record = json.loads(record_path.read_text())
        if record["state"] == completion.DONE:
            for name, size in record["outputs"].items():
                path = record_path.parent / name
                assert path.is_file() and path.stat().st_size == size, f"{record_path} is done without {name}"


def assert_same_results(base: Path, out: Path) -> None:
    for cell in CELLS:
        metrics = [json.loads((root / cell / "cirr_val" / "metrics.json").read_text()) for root in (out, base)]
        assert metrics[0] == metrics[1], cell
        ours, theirs = (torch.load(root / cell / "tat" / "export.pt", weights_only=True) for root in (out, base))
        assert ours.keys() == theirs.keys(), cell
        differ = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not differ, f"{cell}: export differs in {differ[:3]}"
        with np.load(out / cell / "cirr_val" / "features" / "cirr-val.npz") as ours, \
                np.load(base / cell / "cirr_val" / "features" / "cirr-val.npz") as theirs:
            assert ours.files == theirs.files, cell
            assert all(np.array_equal(ours[k], theirs[k]) for k in ours.files), cell


def test_a_grid_killed_at_random_moments_ends_as_an_uninterrupted_one(tmp_path) -> None:
    benchmark = make_benchmark(tmp_path / "benchmark")
    out, base = tmp_path / "out", tmp_path / "uninterrupted"
    grid_file = write_grid(tmp_path / "grid.yaml", benchmark, out, cells=len(CELLS), workers=1, in_process=False)
    output = tmp_path / "grid.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))}
    # the uninterrupted run, in the same folder (paths are part of metrics.json), then moved aside
    trace = tmp_path / "trace-base"
    assert run_grid(grid_file, {**env, "CIR_CHAOS_TRACE": str(trace)}, output) == 0, output.read_text()[-5000:]
    moments = list(dict.fromkeys(traced(trace, out)))
    shutil.move(out, base)
    rng, kills, progress, rounds = random.Random(SEED), [], -1, 0
    uncovered = set(INSIDE)
    while len(kills) < KILLS:
        target = next_kill(moments, progress, KILLS - len(kills), uncovered, rng)
        signal_name = rng.choice(["SIGKILL", "SIGTERM"])
        attempt = len(kills) + rounds
        trace, log = tmp_path / f"trace-{attempt}", tmp_path / f"kill-{attempt}.json"
        code = run_grid(grid_file, {**env, "CIR_CHAOS_TRACE": str(trace), "CIR_CHAOS_KILL": "\t".join(target),
                                    "CIR_CHAOS_SIGNAL": signal_name, "CIR_CHAOS_LOG": str(log)}, output)
        if log.exists():
            kills.append(json.loads(log.read_text()))
            wait_gone(kills[-1]["pids"])
            assert code != 0, f"a grid killed with {signal_name} at {kills[-1]} exited 0"
            check_done_folders(out)
            uncovered.discard(kind(target))
            progress = max(moments.index(e) for e in traced(trace, out) if e in moments)
            continue
        assert code == 0, output.read_text()[-5000:]  # it finished before the moment came: check, start over
        assert_same_results(base, out)
        shutil.rmtree(out)
        progress, rounds = -1, rounds + 1
        assert rounds < 3, f"{len(kills)} kills in {rounds} rounds"
    assert not uncovered, f"no kill inside a {', '.join(sorted(uncovered))} write: {kills}"
    assert any(len(k["pids"]) >= 3 for k in kills), "no kill reached a call's child process and its worker"
    for _ in range(3):  # rerun until it finishes (nothing is killed now, so once should do)
        if run_grid(grid_file, env, output) == 0:
            break
    else:
        pytest.fail(output.read_text()[-5000:])
    check_done_folders(out)
    grid = Grid(grid_file, [])
    assert all(stage.done() for cell in grid.cells for stage in grid.stages(cell))
    assert_same_results(base, out)
