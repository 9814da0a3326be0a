"""Chaos: a two-cell grid (fit, then an evaluation that exports features), killed again and again with SIGKILL or
SIGTERM (the grid and every process under it: its DataLoader worker while a fit runs) at seeded moments, in the
middle of checkpoint and output writes and between them, then rerun until it finishes, ends with every cell's
metrics.json, export and features equal to an uninterrupted run's; after every kill, no folder is marked done
without every output it names.

The moments are events of chaos_hook/sitecustomize.py: each atomic write (os.replace) of any process of the
grid, just before and just after its rename, counted across processes and runs. Waits are bounded (pidfds, no
sleeps). The calls run in the grid's process (in_process): one interpreter start per run keeps the test within
minutes.
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

# about 5 minutes on a 2-core machine under a load of 6, 15 under 12: the timeout leaves room for a loaded CI box
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]
HOOK = Path(__file__).resolve().parent / "chaos_hook"
SEED, KILLS, CELLS = 27, 8, ("seed-0", "seed-1")
GRID_WRITES = 8  # events of the grid's own writes each time it starts: its lock holder, grid.json, two cell.json
ATTEMPT_TIMEOUT = 600  # seconds one grid run may take
STOP_TIMEOUT = 120  # seconds the processes a kill signalled may take to end (SIGTERM: a checkpoint first)


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


def events(counter: Path) -> int:
    return counter.stat().st_size if counter.exists() else 0


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
    grid_file = write_grid(tmp_path / "grid.yaml", benchmark, out, cells=len(CELLS), workers=1)
    counter, kills, output = tmp_path / "events", tmp_path / "kills.jsonl", tmp_path / "grid.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])),
           "CIR_CHAOS_COUNTER": str(counter), "CIR_CHAOS_LOG": str(kills), "CIR_CHAOS_AT": "0"}
    # the uninterrupted run, in the same folder (paths are part of metrics.json), then moved aside
    assert run_grid(grid_file, env, output) == 0, output.read_text()[-5000:]
    total = events(counter)
    shutil.move(out, base)
    rng, killed, rounds = random.Random(SEED), [], 0
    # each run is killed at a moment drawn after the events it starts at: within the grid's own writes, or one
    # to two shares (of KILLS) of a whole run's further on
    latest = GRID_WRITES + 2 * (total - GRID_WRITES) // KILLS
    while len(killed) < KILLS:
        at, signal_name = events(counter) + rng.randint(1, latest), rng.choice(["SIGKILL", "SIGTERM"])
        code = run_grid(grid_file, {**env, "CIR_CHAOS_AT": str(at), "CIR_CHAOS_SIGNAL": signal_name}, output)
        killed = [json.loads(line) for line in kills.read_text().splitlines()] if kills.exists() else []
        if killed and killed[-1]["event"] == at:
            wait_gone(killed[-1]["pids"])
            assert code != 0, f"a grid killed with {signal_name} at {killed[-1]} exited 0"
            check_done_folders(out)
            continue
        assert code == 0, output.read_text()[-5000:]  # it finished before the moment came: check, start over
        assert_same_results(base, out)
        shutil.rmtree(out)
        rounds += 1
        assert rounds < 3, f"{len(killed)} kills in {rounds} rounds"
    for _ in range(3):  # rerun until it finishes (nothing is killed now, so once should do)
        if run_grid(grid_file, {**env, "CIR_CHAOS_AT": "0"}, output) == 0:
            break
    else:
        pytest.fail(output.read_text()[-5000:])
    check_done_folders(out)
    grid = Grid(grid_file, [])
    assert all(stage.done() for cell in grid.cells for stage in grid.stages(cell))
    assert_same_results(base, out)
