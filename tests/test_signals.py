"""A signal that stops a command ends it with 128 + the signal's number and says so (cir.signals); an evaluation
and a grid lock their folders (cir.run_lock); a stopped grid passes the signal to its running call's process group
and waits for it (cir.grid.children), and a grid killed outright still ends its call."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_interruption import DEFAULTS, fit_args
from test_run_lock import HOLD

from cir import evaluate, fit
from cir.config import ConfigError, run_cli
from cir.distributed import hosts
from cir.grid.children import exit_text, run_child
from cir.models import Backbone
from cir.preemption import GracefulInterruption
from cir.run_lock import RunLockedError
from cir.signals import RankLost, Stopped, note, note_peers, rank_lost, stop_on_signals

EVAL_ARGS = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
             "trainer.enable_progress_bar=false", "eval.examples=0"]


def sigterm_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    raise AssertionError("SIGTERM did not stop the command")


def test_sigterm_while_an_evaluation_encodes_ends_it_with_143_and_no_metrics(cirr_root, tmp_path, monkeypatch, capsys):
    """Lightning's handler alone turns the signal into SIGTERMException, a SystemExit with status 0."""
    out = tmp_path / "eval"
    monkeypatch.setattr(Backbone, "encode_image", sigterm_self)
    with pytest.raises(SystemExit) as stop:
        run_cli(evaluate.main, [DEFAULTS, *EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={out}"])
    assert stop.value.code == 128 + signal.SIGTERM
    assert not (out / "metrics.json").exists()
    assert "stopped by SIGTERM before its outputs were complete (exit status 143)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the command's handlers are gone with it


@pytest.mark.slow
def test_sigterm_before_training_starts_ends_a_fit_with_143_and_no_export(image_text_shards, tmp_path, monkeypatch):
    """Between Lightning's setup and the first step only Lightning's handler was there: the run went on to the end."""
    out = tmp_path / "run"
    start = GracefulInterruption.on_train_start

    def signalled_start(self, trainer, module):
        os.kill(os.getpid(), signal.SIGTERM)
        start(self, trainer, module)

    monkeypatch.setattr(GracefulInterruption, "on_train_start", signalled_start)
    with pytest.raises(SystemExit) as stop:
        run_cli(fit.main, [DEFAULTS, *fit_args(out, image_text_shards)])
    assert stop.value.code == 143
    assert not (out / "run.json").exists() and not (out / "export.pt").exists()


def test_an_exception_after_a_signal_is_the_signal(capsys):
    """A DataLoader worker killed by the same signal fails the main process with its own error: the exit is 130."""
    with pytest.raises(Stopped) as stop, stop_on_signals("cir.test"):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except Stopped:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Interrupt") from None
    assert stop.value.code == 130
    assert "cir.test: stopped by SIGINT" in capsys.readouterr().err


def test_an_exception_after_a_signal_that_training_took_is_the_signal(capsys):
    """Training's handler notes SIGTERM and waits for the step's end; a worker killed by the same signal fails the
    step first: the exit is 143 and one line, not the worker's traceback."""
    with pytest.raises(Stopped) as stop, stop_on_signals("cir.test"):
        note(signal.SIGTERM)
        raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")
    assert stop.value.code == 143
    assert "cir.test: stopped by SIGTERM" in capsys.readouterr().err


GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
               "[10.77.0.12]:8418. This is typically caused by a remote worker crashing. Check the logs of the remote "
               "worker before reporting an error. GLHF!")


def lose_a_peer(path, overrides):
    note_peers([("cir-n1", "10.77.0.11"), ("cir-n2", "10.77.0.12")], own=0)
    raise RuntimeError(GLOO_CLOSED)


def test_a_lost_peer_rank_is_one_line_naming_its_rank_and_host_and_the_traceback_is_for_debug(capsys):
    with pytest.raises(SystemExit) as end:
        run_cli(lose_a_peer, ["x.yaml"])
    assert end.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: lost rank 1 on cir-n2 (10.77.0.12): gloo says connection closed by peer; its own output says why it "
        "ended, and rerunning the same command resumes from the last checkpoint",
        "(rerun with --debug for the traceback)"]
    with pytest.raises(RankLost, match="lost rank 1 on cir-n2"):
        run_cli(lose_a_peer, ["x.yaml", "--debug"])


def lose_a_peer_then_get_srun_s_sigterm(path, overrides):
    """srun --kill-on-bad-exit's SIGTERM landing while Lightning tears the run down after the failed collective."""
    note_peers([("cir-n1", "10.77.0.11"), ("cir-n2", "10.77.0.12")], own=0)
    try:
        raise RuntimeError(GLOO_CLOSED)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_that_lands_while_a_lost_peer_s_error_is_handled_still_names_the_peer(capsys):
    with pytest.raises(SystemExit) as end:
        run_cli(lose_a_peer_then_get_srun_s_sigterm, ["x.yaml"])
    assert end.value.code == 2
    assert capsys.readouterr().err.splitlines()[0].startswith("error: lost rank 1 on cir-n2 (10.77.0.12): gloo says ")
    with pytest.raises(RankLost) as lost:
        run_cli(lose_a_peer_then_get_srun_s_sigterm, ["x.yaml", "--debug"])
    assert isinstance(lost.value.__cause__, Stopped) and lost.value.__cause__.signum == signal.SIGTERM


def test_a_lost_peer_names_every_rank_on_its_host_but_this_one_and_an_unknown_address_as_is():
    note_peers([("a", "10.0.0.1"), ("a", "10.0.0.1"), ("b", "10.0.0.2"), ("b", "10.0.0.2")], own=1)
    reset = "[../third_party/gloo/gloo/transport/tcp/pair.cc:589] Read error [10.0.0.2]:31345: Connection reset by peer"
    assert str(rank_lost(RuntimeError(reset))).startswith(
        "lost rank 2 or 3 on b (10.0.0.2): gloo says read error: connection reset by peer;")
    assert str(rank_lost(RuntimeError(reset.replace("10.0.0.2", "10.0.0.1")))).startswith("lost rank 0 on a (10.0.0.1):")
    assert str(rank_lost(RuntimeError(reset.replace("10.0.0.2", "10.0.0.9")))).startswith("lost the peer at 10.0.0.9:")
    assert rank_lost(RuntimeError("CUDA out of memory")) is None


def _lose_rank_one(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    note_peers(hosts(), rank)
    if rank == 1:
        os._exit(0)  # gone without a word, as a killed process
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as err:
        Path(out).write_text(str(rank_lost(err)))


@pytest.mark.ddp
def test_a_real_gloo_group_that_loses_a_rank_names_it(tmp_path):
    """gloo's own message, not a copy: the peer's address is the one its host name resolves to (cir.distributed.hosts)."""
    out = tmp_path / "lost.txt"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_lose_rank_one, args=(port, str(out)), nprocs=2, join=True, start_method="fork")
    host = socket.gethostname()
    assert out.read_text().startswith(f"lost rank 1 on {host} ({socket.gethostbyname(host)}): gloo says ")


def test_an_evaluation_into_a_folder_another_holds_stops_before_any_model(cirr_root, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr("cir.evaluation.run.create_backbone", sigterm_self)
        with pytest.raises(RunLockedError, match=rf"`output_dir`: {out} is in use by another run \(pid {holder.pid} "):
            evaluate.main(None, [*EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={out}"])
    finally:
        holder.kill()
        holder.wait()


def test_an_output_dir_that_is_a_file_stops_an_evaluation_before_any_model(cirr_root, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    out.write_text("")
    monkeypatch.setattr("cir.evaluation.run.create_backbone", sigterm_self)
    with pytest.raises(ConfigError, match=f"config key `output_dir`: {out} is a file, not a folder"):
        evaluate.main(None, [*EVAL_ARGS, f"data.root={cirr_root}", f"output_dir={out}"])


CHILD = """import os, signal, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "300"])
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
open(sys.argv[1], "w").write(f"{os.getpid()} {grandchild.pid}")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.02)


def pids(ready: Path) -> list[int]:
    return [int(p) for p in ready.read_text().split()] if ready.is_file() and ready.read_text() else []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_stopped_grid_passes_the_signal_to_its_call_and_the_call_s_group(tmp_path, capsys):
    ready = tmp_path / "ready"
    sender = threading.Thread(target=lambda: (wait_for(lambda: len(pids(ready)) == 2, "the child started"),
                                              os.kill(os.getpid(), signal.SIGTERM)))
    sender.start()
    with pytest.raises(Stopped) as stop, stop_on_signals("cir.grid"):
        run_child([sys.executable, "-c", CHILD, str(ready)])
    sender.join()
    child, grandchild = pids(ready)
    assert stop.value.code == 143
    wait_for(lambda: not alive(grandchild), "the call's own child ended")
    assert not alive(child)
    err = capsys.readouterr().err
    assert f"cir.grid: SIGTERM: passing it to the running call (pid {child}: -c" in err
    assert f"cir.grid: the call (pid {child}) ended with SIGTERM (status 143)" in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_grid_killed_outright_still_ends_its_call(tmp_path):
    ready = tmp_path / "ready"
    grid = subprocess.Popen([sys.executable, "-c", "import sys; from cir.grid.children import run_child; "
                             "run_child([sys.executable, '-c', sys.argv[1], sys.argv[2]])", CHILD, str(ready)])
    try:
        wait_for(lambda: len(pids(ready)) == 2, "the child started")
        grid.kill()
        grid.wait()
        child, grandchild = pids(ready)
        wait_for(lambda: not alive(child), "the call ended with its killed grid")
    finally:
        for pid in pids(ready):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_call_ended_by_a_signal_fails_and_names_the_signal():
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert exit_text(failed.value.returncode) == "SIGTERM (status -15)"
    assert exit_text(143) == "SIGTERM (status 143)" and exit_text(2) == "status 2" and exit_text(1) == "status 1"


def calls(grid: int) -> list[str]:
    """The grid's children that are its synth call (not whatever else an import may start for a moment)."""
    children = Path(f"/proc/{grid}/task/{grid}/children").read_text().split()
    found = []
    for child in children:
        try:
            found += [child] if b"cir.data.synth" in Path(f"/proc/{child}/cmdline").read_bytes() else []
        except FileNotFoundError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_sigterm_to_a_real_grid_stops_its_running_call_and_exits_143(tmp_path):
    """`python -m cir.grid` with one long synth stage: SIGTERM (what `kill` and `timeout` send) once the stage runs."""
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(f"task: grid\nname: stop\noutput_dir: {tmp_path / 'grid'}\nstages:\n  bench:\n    cli: synth\n"
                         f"    config: {experiments / 'demo_synth.yaml'}\n    overrides:\n"
                         "      synth.pretrain_samples: 1000000\n")
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        grid = subprocess.Popen([sys.executable, "-m", "cir.grid", str(grid_file)], stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        wait_for(lambda: grid.poll() is not None or calls(grid.pid), "the grid started its call", 120)
        grid.send_signal(signal.SIGTERM)
        grid.wait(timeout=120)
    finally:
        if grid.poll() is None:
            grid.kill()
    err = log.read_text()
    assert grid.returncode == 143, err
    assert "cir.grid: SIGTERM: passing it to the running call (pid " in err
    assert "ended with SIGTERM (status " in err and "stopped by SIGTERM before its outputs were complete" in err
