import errno
import os
import stat

import pytest

from cir.io import AtomicFiles, atomic_folder, atomic_path, atomic_write_text, leftover_temps


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_complete_write_replaces(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and len(list(target.parent.iterdir())) == 1


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_a_plain_open_gives_under_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o666 & ~umask


def test_a_full_disk_names_the_target_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "figure.png"
    atomic_write_text(target, "old")
    with pytest.raises(OSError, match="No space left on device") as failed:
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert failed.value.filename == str(target) and failed.value.errno == errno.ENOSPC
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_atomic_files_publish_one_by_one_and_discard_the_rest(tmp_path):
    """ShardWriter's opener / post pair: a shard appears under its name only once published."""
    files = AtomicFiles()
    for name in ("a.tar", "b.tar"):
        with open(files.open(str(tmp_path / name)), "w") as f:
            f.write(name)
    files.publish(str(tmp_path / "a.tar"))
    assert (tmp_path / "a.tar").read_text() == "a.tar" and [p.name for p in leftover_temps(tmp_path)] != []
    assert not (tmp_path / "b.tar").exists()
    files.discard()
    assert [p.name for p in tmp_path.iterdir()] == ["a.tar"] and leftover_temps(tmp_path) == []


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "export"
    with atomic_folder(target) as tmp:
        (tmp / "a.bin").write_text("one")
        (tmp / "b.bin").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "a.bin").write_text("half")
            raise RuntimeError("killed mid-write")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.bin": "one", "b.bin": "one"}
    with atomic_folder(target) as tmp:
        (tmp / "c.bin").write_text("two")
    assert [p.name for p in target.iterdir()] == ["c.bin"] and [p.name for p in tmp_path.iterdir()] == ["export"]
