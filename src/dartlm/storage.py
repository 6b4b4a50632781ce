"""Writing results that can be trusted: atomic files and folders, fingerprints, and one writer per output.

Everything that is read back later (weights, exports, result and summary JSON, data files, the cached base) is
written under a temporary name in the same folder and renamed into place, so a reader or a resumed run sees either
the old complete file or the new complete file, never half of one. A folder that is a unit (an export, a data
split, a base) is staged whole and swapped in; its completion marker is written last, inside the staging folder.

A fingerprint is the sha256 of a folder's files (names and contents), so a result can name exactly what produced it
and a later run can tell whether it still belongs to the same inputs.

`OutputLock` takes an advisory lock (flock) next to an output and records its holder; a second writer is refused
with one line naming the first. The kernel releases the lock when the holder dies, even by SIGKILL, so a crash
leaves no stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LockedError(RuntimeError):
    """Another process is writing the same output."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path | str, folder: bool = False) -> None:
    """The permissions a plain open() or mkdir() would have given (mkstemp and mkdtemp make them private)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def _temporary_sibling(path: Path) -> Iterator[tuple[int, str]]:
    """(open descriptor, name) of a new hidden file beside path; once the block has written it, it is fsynced and
    renamed over path. On any error it is removed and path is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _usual_mode(tmp)
        yield handle, tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_file(path: Path | str, mode: str = "w") -> Iterator:
    """Open a temporary sibling of path for writing; on success it is fsynced and renamed over path."""
    with _temporary_sibling(Path(path)) as (handle, _):
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as out:
            yield out


def write_text(path: Path | str, text: str) -> None:
    """Replace path's content with text, atomically."""
    with atomic_file(path) as out:
        out.write(text)


def write_json(path: Path | str, data) -> None:
    """Replace path's content with data as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_safetensors(state: dict, path: Path | str, metadata: dict | None = None) -> None:
    """safetensors.torch.save_file, atomically (a kill mid-write leaves the old file or none, never half)."""
    from safetensors.torch import save_file

    with _temporary_sibling(Path(path)) as (handle, tmp):
        os.close(handle)
        save_file(state, tmp, metadata=metadata)


def staging_folder(target: Path) -> Path:
    """A new empty hidden sibling of target (same filesystem, so the final rename is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    _usual_mode(staged, folder=True)
    return staged


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS, errno.EPERM):  # filesystem without the flag
        return False
    raise OSError(ctypes.get_errno(), f"cannot swap {a} and {b}: {os.strerror(ctypes.get_errno())}")


def replace_folder(staged: Path, target: Path) -> None:
    """Put the finished folder `staged` at `target`, replacing what is there by renames only, then delete the old.

    On Linux the two folders swap names in one atomic step, so a reader finds the old complete folder or the new
    one under the name, never none and never a mixture; elsewhere the old one is renamed aside first (a reader
    may then briefly find no folder, but never a half one).
    """
    if target.is_dir() and not target.is_symlink() and _exchange(staged, target):
        _fsync_dir(target.parent)
        remove_tree(staged)  # now the old folder
        return
    aside = None
    if target.exists() or target.is_symlink():
        aside = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(target, aside)
    os.replace(staged, target)
    _fsync_dir(target.parent)
    if aside is not None:
        remove_tree(aside)


def remove_tree(folder: Path) -> None:
    """Delete a folder: renamed to a hidden name first, so an interrupted delete never leaves a half folder under
    the real name."""
    if not folder.exists():
        return
    doomed = folder.with_name(f".{folder.name}.deleting-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hashes(folder: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under folder (relative POSIX path -> hex), hidden files and `exclude` left out."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if not path.is_file() or relative in exclude or any(part.startswith(".") for part in relative.split("/")):
            continue
        hashes[relative] = sha256_file(path)
    return hashes


def digest(value) -> str:
    """A short stable fingerprint of JSON-serialisable data (settings, a file-hash mapping)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lock_path(output: Path) -> Path:
    """The lock of an output file or folder: a hidden sibling, so that replacing the output keeps the lock."""
    return output.parent / f".{output.name}.lock"


class OutputLock:
    """An exclusive, non-blocking lock on one output (file or folder), held for the life of a `with` block.

    A second writer gets LockedError naming the holder (pid, host, command, start time). Locks are advisory and
    local to one machine's filesystem; a lock file left behind by a dead holder is simply taken over.
    """

    def __init__(self, output: Path | str, what: str = "output", *, wait: bool = False):
        self.output = Path(output)
        self.what = what
        self.wait = wait  # block until the holder is done instead of refusing
        self.path = lock_path(self.output)
        self._handle = None

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockedError(f"{self.output}: another dartlm process is writing this {self.what} ({holder}); wait "
                              "for it to finish or use another output") from None
        handle.seek(0)
        handle.truncate()
        command = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{command}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
