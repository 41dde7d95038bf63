"""Atomic writing: a file or a directory appears whole under its final name, or not at all.

Every writer in ailora goes through these three functions, so they agree on what a reader can
see after a crash:

- ``atomic_file(path)`` yields a temporary sibling to write; on success it is flushed to disk
  (``fsync``) and renamed over ``path``; on failure it is removed.
- ``atomic_dir(out, overwrite)`` yields a temporary sibling directory to fill; on success an
  existing ``out`` is first renamed aside (``.NAME.old-*``), the new one renamed into place, then
  the old one removed, so ``out`` never exists half-written. A non-empty ``out`` is refused
  unless ``overwrite``.
- ``remove_stale(out)`` deletes the ``.NAME.tmp-*`` / ``.NAME.old-*`` siblings a killed process
  left behind (``atomic_dir`` calls it before writing again), ``remove_stale_in(dir)`` every such
  entry in a directory (a resumed run calls it on its run directory).
- ``require_writable(out)`` refuses, before any work, an output that could not be created.

Temporary names start with a dot and carry the final name, so ``ls`` hides them and a person
can tell what they were for.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ailora.errors import AiloraError

STAGING_TAGS = ("tmp", "old")


def _staging_prefix(path: Path, tag: str) -> str:
    return f".{path.name}.{tag}-"


def _fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (not possible on every platform; best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Free bytes under which a failed write is taken for a full disk: libraries that write through
# their own code (torch.save: "[enforce fail at inline_container.cc]", safetensors) lose the errno.
FULL_DISK_BYTES = 1 << 20


def _is_full(exc: BaseException, where: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return not isinstance(exc, AiloraError) and shutil.disk_usage(where).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextmanager
def _full_disk_named(path: Path, staging: Path) -> Iterator[None]:
    """A write into ``staging`` (for ``path``) that failed for lack of space as a one-line AiloraError;
    checked while the staging entry still holds what was written (the caller removes it after)."""
    try:
        yield
    except Exception as exc:  # torch, safetensors and the OS each raise their own type for a full disk
        if _is_full(exc, staging.parent):
            path = _final(path)
            device = next(d for d in path.parents if d.exists())
            raise AiloraError(f"no space left on the device of {device} while writing {path}; nothing was "
                              "replaced (free some space and run again)") from None
        raise


def _final(path: Path) -> Path:
    """Where ``path``, a file inside a staging directory of ``atomic_dir``, will be: the name a user gave."""
    staged = re.match(r"^\.(.+)\.tmp-", path.parent.name)
    return path.parent.parent / staged.group(1) / path.name if staged else path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` when the block succeeds."""
    path = Path(path)
    with _os_errors_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_staging_prefix(path, "tmp"))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _full_disk_named(path, tmp):
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj, sort_keys: bool = False) -> Path:
    """``obj`` as indented JSON with a final newline, atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")


def require_writable(out: str | os.PathLike, what: str = "output") -> Path:
    """``out`` as a Path, or a one-line error if it could not be created (or replaced) and written.

    Checked before any heavy work: the nearest existing ancestor must be a directory where a file
    can be created (a path under a regular file, or in a read-only place, is refused). Nothing is
    left behind: a probe file is created and removed.
    """
    out = Path(out)
    real_path(out, what)  # a link loop anywhere on the path: a one-line error, not OSError(ELOOP) later
    parent = out.parent if out.name else out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.exists():
        raise AiloraError(f"{what} {out}: no part of the path exists")
    if not parent.is_dir():
        raise AiloraError(f"{what} {out} cannot be created: {parent} is a file, not a directory")
    for d in (parent, out) if out.is_dir() else (parent,):
        try:  # os.access says yes to root on a read-only mount or in /proc: try it
            fd, probe = tempfile.mkstemp(dir=d, prefix=_staging_prefix(out, "tmp"))
        except OSError as exc:
            raise AiloraError(f"{what} {out} cannot be written: {d} is not writable ({exc.strerror})") from None
        os.close(fd)
        os.unlink(probe)
    return out


def real_path(path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` absolute with every symbolic link resolved (spellings of one place compare equal);
    a one-line error for a link loop."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError("Symlink loop ..."), later ones OSError
        raise AiloraError(f"{what} {path} is a loop of symbolic links") from None


def refuse_aliased_output(out: str | os.PathLike, inputs: Iterable[tuple[str, str | os.PathLike | None]],
                          what: str = "output") -> None:
    """Refuse, before anything is touched, an output that is, holds or lies inside one of ``inputs``
    ((name, path) pairs; paths that do not exist, such as ``minilm``, are skipped), or that is or holds the
    working directory: replacing it (``--overwrite``) would delete the inputs or the user's files.
    Paths compare after resolving links, so relative, absolute and linked spellings are one place."""
    target = real_path(out, what)
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise AiloraError(f"{what} {out} is the working directory or holds it; give a directory of its own")
    for name, given in inputs:
        if given is None or not os.path.lexists(given):
            continue
        source = real_path(given, name)
        relation = "is" if target == source else "holds" if target in source.parents else \
            "lies inside" if source in target.parents else None
        if relation:
            raise AiloraError(f"{what} {out} {relation} the input {given} ({name}); write it somewhere apart")


def check_empty_or_overwrite(out: Path, overwrite: bool, what: str = "output") -> None:
    """Refuse a non-empty ``out`` (or a file in its place) unless ``overwrite``, and an ``out`` that
    cannot be written (``require_writable``)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise AiloraError(f"{what} {out} already exists and is not empty; choose another or allow overwrite")
    require_writable(out, what)


@contextmanager
def _os_errors_named(path: Path) -> Iterator[None]:
    """An OSError while creating a staging file or directory for ``path`` as a one-line AiloraError."""
    try:
        yield
    except OSError as exc:
        raise AiloraError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory of ``out`` to fill; it becomes ``out`` on success."""
    out = Path(out)
    check_empty_or_overwrite(out, overwrite)
    remove_stale(out)  # what a writer of ``out`` killed mid-save left
    with _os_errors_named(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_staging_prefix(out, "tmp")))
    try:
        with _full_disk_named(out, tmp):
            yield tmp
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=_staging_prefix(out, "old")))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        _fsync_dir(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def clear_dir(path: str | os.PathLike) -> None:
    """Delete the directory ``path`` (``--overwrite``); through a symbolic link (a run directory linked
    to scratch storage), delete what the target holds and keep the link and the target."""
    path = Path(path)
    if not path.is_symlink():
        shutil.rmtree(path)
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Delete the staging siblings of ``out`` that an interrupted writer left; returns them."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    stale = [p for tag in STAGING_TAGS for p in out.parent.glob(_staging_prefix(out, tag) + "*")]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def remove_stale_in(directory: str | os.PathLike) -> list[Path]:
    """Delete every staging entry (``.NAME.tmp-*`` / ``.NAME.old-*``) directly inside ``directory``:
    what writers killed mid-save left there (a resumed or rerun command calls it first)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    names = {p.name[1:].split(f".{tag}-")[0] for tag in STAGING_TAGS for p in d.glob(f".*.{tag}-*")}
    return [p for name in sorted(names) for p in remove_stale(d / name)]


def require_dir(path: str | os.PathLike, what: str, required: tuple[str, ...] = ()) -> Path:
    """``path`` as a Path, or a one-line error if it is not a directory holding the ``required`` files."""
    p = Path(path)
    if not p.exists():
        raise AiloraError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise AiloraError(f"{what} {p} is not a directory")
    for name in required:
        if not (p / name).is_file():
            raise AiloraError(f"{what} {p} has no {name}")
    return p


def read_json(path: str | os.PathLike):
    """The JSON value in ``path``, or a one-line error naming the file."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AiloraError(f"{p} is not valid JSON: {exc}") from None


def read_tensors(path: str | os.PathLike, what: str = "weights") -> dict:
    """The tensors of a safetensors file, or a one-line error naming it (truncated, foreign, ...)."""
    from safetensors.torch import load_file  # here: this module is imported by start-up paths without torch

    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise AiloraError(f"cannot read {what} {path}: {str(exc).splitlines()[0]}") from None
