"""One run per output_dir (cir.run_lock): a second run stops at once naming the holder; a dead holder or this
SLURM job's earlier attempt does not block; an output_dir that cannot be written stops before any model is built."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest
from test_interruption import DEFAULTS, fit_args

from cir import fit, training
from cir.config import run_cli
from cir.run_lock import RunLock, RunLockedError, stale_reason, this_process

HOLD = "import sys; from cir.run_lock import RunLock\nwith RunLock(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def holder(tmp_path):
    """Start a process holding tmp_path/run; yields (start, out) where start(env) returns the process."""
    procs = []

    def start(env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start, tmp_path / "run"
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def no_model(*args):
    raise AssertionError("a model was built")


def test_a_second_run_stops_at_once_naming_the_holder_then_goes_ahead_once_the_holder_is_killed(
        holder, image_text_shards, monkeypatch, capsys):
    start, out = holder
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    proc = start()
    monkeypatch.setattr(training, "build_task", no_model)
    with pytest.raises(SystemExit) as stopped:
        run_cli(fit.main, [DEFAULTS, *fit_args(out, image_text_shards)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"error: config key `output_dir`: {out} is in use by another run "
                             f"(pid {proc.pid} on {socket.gethostname()} since ") and len(err) == 2
    proc.send_signal(signal.SIGKILL)  # the OS releases a dead process's lock: no stale lock to clean up
    proc.wait()
    with RunLock(out):
        assert this_process()["pid"] == os.getpid()


def test_a_requeued_slurm_job_takes_over_its_earlier_attempts_lock(holder, monkeypatch, caplog):
    start, out = holder
    start({"SLURM_JOB_ID": "4242"})
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    with pytest.raises(RunLockedError):
        RunLock(out).__enter__()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level(logging.WARNING, logger="cir.run_lock"), RunLock(out):
        pass
    assert "an earlier attempt of SLURM job 4242" in caplog.text


def test_a_lock_left_by_a_dead_process_on_this_host_is_stale_one_on_another_host_is_not():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = {**this_process(), "slurm_job_id": None}
    assert stale_reason({"pid": gone.pid, "host": me["host"]}, me) == f"process {gone.pid} on {me['host']}, which is gone"
    assert stale_reason({"pid": os.getppid(), "host": me["host"]}, me) is None
    assert stale_reason({"pid": gone.pid, "host": "elsewhere"}, me) is None


def test_an_output_dir_that_is_a_file_stops_in_one_line_before_any_model(image_text_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "build_task", no_model)
    out = tmp_path / "run"
    out.write_text("not a folder")
    with pytest.raises(SystemExit):
        run_cli(fit.main, [DEFAULTS, *fit_args(out, image_text_shards)])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: config key `output_dir`: {out} is a file, not a folder" and len(err) == 2


def test_a_read_only_output_dir_stops_in_one_line_before_any_model(image_text_shards, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training, "build_task", no_model)

    def read_only(self, *args, **kwargs):  # what a read-only mount answers (chmod does not stop root)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self.lock_file))

    monkeypatch.setattr(type(RunLock(tmp_path).lock), "acquire", read_only)
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_cli(fit.main, [DEFAULTS, *fit_args(out, image_text_shards)])
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: config key `output_dir`: cannot write to {out}: Read-only file system" and len(err) == 2
