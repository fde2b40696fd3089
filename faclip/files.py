"""Files: atomic writes (every artifact is written whole or not at all), content hashes, and the bounds
on what faclip reads from a data folder: a regular file under the data root, of bounded size
(`read_regular_file`), an image of bounded pixels and aspect (`image_size_problem`), and nothing under
the root that DVC's own hashing would hang on (`unhashable_entries`)."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

from faclip.errors import FaclipError, is_disk_full

CHUNK = 1 << 20

# What prepare reads from a data folder: a JSON file is parsed whole, an image is hashed and decoded.
MAX_JSON_BYTES = 512 << 20
MAX_IMAGE_BYTES = 256 << 20
# An image whose header claims more pixels than this is refused unopened (a decompression bomb).
MAX_IMAGE_PIXELS = 64_000_000
# The CLIP processor scales an image's shortest side to its input size (224 px for CLIPfa) before the
# centre crop, so a 30000x1 strip would become 224 x 6.7M px; no food photo is this elongated.
MAX_ASPECT_RATIO = 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hex sha256 over a folder: every file's relative POSIX path and bytes, in sorted order."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode() + b"\n")
    return digest.hexdigest()


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_under_root(root: Path, base_dir: Path, rel_path: str) -> Path | None:
    """`rel_path` (relative to `base_dir`) as a path under `root`, or None if it points outside
    (absolute, `..`, or a symlink out). Every path read from a data file goes through this.
    A symlink loop is not an error here (it stays where it is); reading it is (`read_regular_file`)."""
    if os.path.isabs(rel_path) or rel_path.startswith(("\\", "~")):
        return None
    try:
        candidate = Path(os.path.normpath(base_dir / rel_path))
        candidate.relative_to(root)
        # os.path.realpath, not Path.resolve: it does not raise on a symlink loop.
        inside = _is_under(os.path.realpath(candidate), os.path.realpath(root))
    except ValueError:  # outside the root as written, or a NUL in the path
        return None
    return candidate if inside else None


class RefusedFile(Exception):
    """A data file faclip will not read: `kind` is outside_root, missing, not_a_file, too_large or unreadable."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


_FILE_TYPES = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]


def _file_type(mode: int) -> str:
    return next((name for test, name in _FILE_TYPES if test(mode)), "not a regular file")


def read_regular_file(path: str | Path, root: str | Path | None, max_bytes: int) -> bytes:
    """The bytes of `path`, which must be a regular file under `root` (symlinks followed; any place when
    `root` is None, as for a query photo) of at most `max_bytes`; else RefusedFile. Never blocks on a
    FIFO, never reads a device, never follows a symlink out of the root or round a loop, never reads
    more than `max_bytes` + 1 bytes."""
    if root is not None and not _is_under(os.path.realpath(path), os.path.realpath(root)):
        raise RefusedFile("outside_root", "a symlink leads outside data.root")
    try:
        info = os.stat(path)  # the file's type, before opening it (opening a FIFO can block)
    except FileNotFoundError:
        raise RefusedFile("missing", "no such file (or a dangling symlink)") from None
    except OSError as err:
        raise RefusedFile("unreadable", err.strerror or type(err).__name__) from None
    if not stat.S_ISREG(info.st_mode):
        raise RefusedFile("not_a_file", _file_type(info.st_mode))
    if info.st_size > max_bytes:
        raise RefusedFile("too_large", f"{info.st_size} bytes (limit {max_bytes})")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the check, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise RefusedFile("unreadable", err.strerror or type(err).__name__) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RefusedFile("not_a_file", _file_type(mode))
        try:
            data = f.read(max_bytes + 1)
        except OSError as err:
            raise RefusedFile("unreadable", err.strerror or type(err).__name__) from None
    if len(data) > max_bytes:
        raise RefusedFile("too_large", f"more than {max_bytes} bytes")
    return data


def is_utf8_name(path: str | Path) -> bool:
    """Whether a path's name is valid UTF-8 (Python keeps other bytes, say a cp1256 name from a zip made on
    Windows, as lone surrogates that cannot be written to a UTF-8 file)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def escaped_path(path: str | Path) -> str:
    """A path as text that can always be written and read back: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


NON_UTF8_NAME = "name not UTF-8"
NON_UTF8_FIX = "rename it to UTF-8, e.g. `convmv -f cp1256 -t utf8 -r --notest <folder>` for a zip made on Windows"


def image_size_problem(width: int, height: int) -> tuple[str, str] | None:
    """Why an image of this size (read from its header) must not be decoded, as (kind, detail), or
    None: kind `too_large` (more than MAX_IMAGE_PIXELS) or `extreme_aspect` (one side more than
    MAX_ASPECT_RATIO times the other). `prepare`, `embed` and search all ask this before decoding."""
    if width * height > MAX_IMAGE_PIXELS:
        return "too_large", f"{width}x{height} pixels, more than the {MAX_IMAGE_PIXELS // 1_000_000} Mpx limit"
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        return "extreme_aspect", f"{width}x{height} pixels, more elongated than {MAX_ASPECT_RATIO}:1"
    return None


def unhashable_entries(root: str | Path) -> list[tuple[str, str]]:
    """(path, what) for each entry under `root` that DVC's hashing of the folder hangs or fails on.

    DVC opens every file under a dependency folder, following symlinks to files (not to folders): it
    waits forever on a FIFO, reads a symlink to /dev/zero forever, and stops with an error on a
    dangling or looping symlink, a socket, or a file or folder it may not read. DVC 3 also stops
    (`ERROR: unexpected error - 'utf-8' codec can't encode characters ...: surrogates not allowed`) on a
    file whose name, or a folder's above it, is not valid UTF-8 (an empty such folder it passes).
    Paths are returned as os.walk gives them (not UTF-8 bytes as lone surrogates: see `escaped_path`).
    """
    found = []

    def unreadable(err: OSError) -> None:
        found.append((str(err.filename), f"unreadable folder ({err.strerror})"))

    for folder, _, names in os.walk(root, onerror=unreadable):  # symlinked folders: listed, not entered
        for name in names:
            path = os.path.join(folder, name)
            if not is_utf8_name(os.path.relpath(path, root)):
                found.append((path, NON_UTF8_NAME))
                continue
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                found.append((path, "dangling symlink"))
                continue
            except OSError as err:
                found.append((path, err.strerror or type(err).__name__))
                continue
            if not stat.S_ISREG(mode):
                found.append((path, _file_type(mode)))
            elif not os.access(path, os.R_OK):
                found.append((path, "not readable (permissions)"))
    return sorted(found)


# --- atomic writes ------------------------------------------------------------------------------

# A temp file or folder is named .<target>.<pid>.<random>.tmp, beside its target; one left by a killed
# writer (its pid gone) is removed the next time anything is written there.
_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | Path, target: str | None = None) -> list[str]:
    """Remove the temp files/folders an interrupted atomic write left in `folder` (only `target`'s, if
    given); a temp whose writer is still running is kept. Returns the names removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        if target is not None and not name.startswith(f".{target}."):
            continue
        match = _TEMP.match(name)
        if match and _pid_alive(int(match.group(1))):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed.append(name)
    return removed


def _reraise_disk_full(err: BaseException, *paths: Path) -> None:
    if is_disk_full(err, paths[0].parent):
        raise FaclipError(f"no space left on the device to write {', '.join(map(str, paths))}; free some space "
                          f"and rerun (nothing was half-written)") from None


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file path beside `path`; on success it replaces `path` in one rename. A full disk
    is a one-line FaclipError, and `path` is left as it was."""
    path = Path(path)
    try:
        with _atomic_path(path) as tmp:
            yield tmp
    except Exception as err:
        _reraise_disk_full(err, path)
        raise


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temp paths for several files; only when all were written do they replace their targets
    (one rename each), so a failure (a full disk, say) leaves the previous set whole, never a mix."""
    paths = [Path(path) for path in paths]
    try:
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(_atomic_path(path)) for path in paths]
    except Exception as err:
        _reraise_disk_full(err, *paths)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces the folder `path`. A full disk
    is a one-line FaclipError, and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    old = path.with_name(f".{path.name}.old")
    if old.exists():  # a writer was killed mid-swap: put the last good folder back first
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as err:
        _reraise_disk_full(err, path)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_text(obj, sort_keys: bool = True) -> str:
    """Deterministic JSON text (sorted keys unless told to keep the dict's order, UTF-8, trailing newline), as
    every faclip JSON file is written."""
    return json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj, sort_keys: bool = True) -> None:
    """Write JSON atomically and deterministically (sorted keys unless `sort_keys` is False: then the dict's
    own order, as for metrics/headline.json, whose order is `dvc exp show`'s column order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, sort_keys), encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
