"""Writing files and directories so that a reader sees the old version or the new one, never half of one.

Every writer of the toolkit (payloads, merged checkpoints, bundles, engines, reports) goes through here. Temporary
names are unique per call, so concurrent runs writing next to each other never collide.

A rename is atomic for running readers, but after a power cut the kernel may have persisted the rename before the
data (ext4 and xfs without data=ordered guarantees, or any delayed allocation): the new name then holds an empty or
partial file. So the data is fsynced before the rename, and the directory holding the name after it.

Edge subset (the device writes payloads and builds engines): Python 3.6-clean, standard library only.
"""
import errno
import os
import shutil
import stat
import uuid
from typing import Callable

from ladon_deploy.errors import LadonError


def _parent_of(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise LadonError("cannot write %s: directory %s does not exist" % (path, directory))
    return directory


def _sibling(path: str, tag: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)),
                        ".%s.%s-%s" % (os.path.basename(path), tag, uuid.uuid4().hex[:12]))


def check_writable_file(path: str) -> None:
    """Refuses, before any work is done, an output path whose directory is missing or that names a directory."""
    if os.path.isdir(path):
        raise LadonError("cannot write %s: it is a directory" % path)
    _parent_of(path)


def _fsync(path: str) -> None:
    """Flushes a file's or a directory's data and metadata to the disk (a directory: the names it holds)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a directory say so
            raise
    finally:
        os.close(descriptor)


def _fsync_tree(root: str) -> None:
    """Fsyncs every regular file of a tree and every directory. Only regular files hold data to flush: opening a
    device node can fail (ENODEV) and opening a FIFO blocks until a writer comes, so those, sockets and symbolic
    links (whose target may lie anywhere) are skipped."""
    for directory, _subdirectories, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                _fsync(path)
        _fsync(directory)


def write_file_atomically(path: str, write: Callable[[str], None]) -> None:
    """Calls write(temporary_path) next to `path`, then renames the result over `path` in one step.

    `path` afterwards holds the old content (or nothing) if write() fails or the process dies, the new content
    once this returns, also after a power cut. A failed write() leaves no temporary file behind.
    """
    check_writable_file(path)
    temporary = _sibling(path, "partial")
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_bytes_atomically(path: str, data: bytes) -> None:
    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            stream.write(data)

    write_file_atomically(path, write)


def write_text_atomically(path: str, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def make_staging_directory(final: str) -> str:
    """A new, empty hidden sibling of `final` to assemble a directory in (permissions follow the umask)."""
    _parent_of(final)
    staging = _sibling(final, "partial")
    os.mkdir(staging)  # mode 0o777 minus the umask, as for any directory the user creates
    return staging


def replace_directory(staging: str, final: str) -> None:
    """Moves the assembled `staging` directory to `final`.

    An existing `final` stays whole until the new one is in place: it is renamed aside, the new one renamed in, and
    only then removed; if the second rename fails, the old one is renamed back before the error propagates. Every
    file of `staging` is fsynced before the rename, the parent directory after it.
    """
    _fsync_tree(staging)
    parent = os.path.dirname(os.path.abspath(final))
    if not os.path.lexists(final):
        os.rename(staging, final)
        _fsync(parent)
        return
    retired = _sibling(final, "old")
    os.rename(final, retired)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(retired, final)
        raise
    _fsync(parent)
    shutil.rmtree(retired, ignore_errors=True)
