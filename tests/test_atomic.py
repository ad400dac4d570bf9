"""The one atomic writer: a reader sees the old file or the new one, never half of one, even when the writer dies.

Writing in place (no temporary name) or renaming before the data is on disk would each fail a test here.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ladon_deploy import atomic
from ladon_deploy.atomic import replace_directory, write_bytes_atomically, write_file_atomically

OLD = b"old content\n"


def _leftovers(directory):
    return sorted(name for name in os.listdir(str(directory)) if name.startswith("."))


@pytest.mark.parametrize("existing", [True, False])
def test_a_writer_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, existing):
    target = tmp_path / "result.bin"
    if existing:
        target.write_bytes(OLD)

    def write_half_then_fail(temporary):
        with open(temporary, "wb") as stream:
            stream.write(b"new half")
            stream.flush()
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_file_atomically(str(target), write_half_then_fail)
    assert (target.read_bytes() == OLD) if existing else not target.exists()
    assert _leftovers(tmp_path) == []


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from ladon_deploy.atomic import write_file_atomically

    def write(temporary):
        with open(temporary, "wb") as stream:
            for _ in range(400):
                stream.write(b"n" * 4096)
                stream.flush()
                time.sleep(0.05)

    write_file_atomically(sys.argv[1], write)
""")


@pytest.mark.parametrize("existing", [True, False])
def test_a_writer_killed_with_sigkill_mid_write_leaves_the_old_file(tmp_path, existing):
    target = tmp_path / "result.bin"
    if existing:
        target.write_bytes(OLD)
    child = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        partial = []
        while time.monotonic() < deadline and child.poll() is None:
            partial = [tmp_path / name for name in _leftovers(tmp_path)]
            if partial and partial[0].stat().st_size >= 3 * 4096:
                break
            time.sleep(0.05)
        assert partial and child.poll() is None, "the child never got to write"
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert (target.read_bytes() == OLD) if existing else not target.exists()
    # The killed writer's temporary stays (nothing ran to remove it) under a hidden name, never the target's.
    assert all(name.startswith(".result.bin.partial-") for name in _leftovers(tmp_path))


def test_data_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink("/proc/self/fd/%d" % descriptor)))
        real_fsync(descriptor)

    def replace(source, destination):
        events.append(("replace", str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "result.bin"
    write_bytes_atomically(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".result.bin.partial-")
    assert events[2][1] == str(tmp_path)


def test_a_directory_is_fsynced_file_by_file_before_it_is_renamed_in(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.readlink("/proc/self/fd/%d" % descriptor))
        real_fsync(descriptor)

    final = tmp_path / "bundle"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = atomic.make_staging_directory(str(final))
    os.mkdir(os.path.join(staging, "engines"))
    for name in ("manifest.json", os.path.join("engines", "plan.bin")):
        with open(os.path.join(staging, name), "w") as handle:
            handle.write(name)
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    replace_directory(staging, str(final))
    assert sorted(os.listdir(str(final))) == ["engines", "manifest.json"]
    names = [os.path.relpath(path, staging) for path in synced if path.startswith(staging)]
    assert {"manifest.json", os.path.join("engines", "plan.bin"), ".", "engines"} <= set(names)
    assert synced[-1] == str(tmp_path)  # the parent, after the rename
    assert _leftovers(tmp_path) == []


SPECIAL_FILES_SCRIPT = textwrap.dedent("""
    import json, os, socket, sys
    from ladon_deploy import atomic

    final = sys.argv[1]
    staging = atomic.make_staging_directory(final)
    with open(os.path.join(staging, "manifest.json"), "w") as handle:
        handle.write("{}")
    os.mkfifo(os.path.join(staging, "pipe"))  # opening it for reading would wait for a writer forever
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(os.path.join(staging, "socket"))
    os.symlink("/dev/null", os.path.join(staging, "link"))
    try:  # a character device with no driver behind it: opening it fails (ENXIO / ENODEV)
        os.mknod(os.path.join(staging, "device"), 0o600 | 0o020000, os.makedev(240, 7))
    except OSError:
        pass
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.path.relpath(os.readlink("/proc/self/fd/%d" % descriptor), staging))
        real_fsync(descriptor)

    atomic.os.fsync = fsync
    atomic.replace_directory(staging, final)
    print(json.dumps(sorted(synced)))
""")


def test_a_tree_with_a_fifo_a_socket_a_device_and_a_link_is_renamed_in_without_opening_them(tmp_path):
    # In a child with a deadline: a writer that opens the FIFO blocks forever, and the deadline turns that into
    # a failure instead of a hung test run.
    final = tmp_path / "bundle"
    result = subprocess.run([sys.executable, "-c", SPECIAL_FILES_SCRIPT, str(final)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    synced = result.stdout.split("\n")[-2]
    assert "manifest.json" in synced and "pipe" not in synced and "socket" not in synced
    assert "link" not in synced and "device" not in synced
    assert (final / "manifest.json").read_text() == "{}"
    assert os.path.exists(str(final / "pipe"))
