"""The one user-facing error type, and the wrapper that turns it into a one-line exit."""

import errno
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable

DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
NEARLY_FULL_BYTES = 1 << 20
_REMOTE_SECTION = re.compile(r"^\s*\[\s*['\"]?remote\s+\"", re.MULTILINE)  # ['remote "storage"'] in .dvc/config
# A stage that fails under DVC (`dvc repro`, `dvc exp run`) leaves params.yaml as it was set and, past the
# check_params gate, the stage's outputs deleted: this one step puts back the last commit's params and outputs
# (and leaves the user's other edits alone, as `dvc exp apply HEAD` would not).
GO_BACK = ("to go back to the last commit's params and outputs: "
           "`git checkout -- params.yaml dvc.lock metrics && dvc checkout`")


class FaclipError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


def outputs_hint(start: str | Path = ".") -> str:
    """The whole fix for missing pipeline outputs, not one stage at a time: `dvc pull` when the DVC repository
    holding `start` has a remote configured, else `dvc repro`."""
    start = Path(start).resolve()
    root = next((folder for folder in (start, *start.parents) if (folder / ".dvc").is_dir()), None)
    for name in ("config", "config.local") if root is not None else ():
        try:
            with open(root / ".dvc" / name, encoding="utf-8", errors="replace") as config:
                has_remote = _REMOTE_SECTION.search(config.read(1 << 20))
        except OSError:
            continue
        if has_remote:
            return "run `dvc pull` (a DVC remote is configured), or `dvc repro` to rebuild them"
    return "run `dvc repro` (the whole pipeline)"


def is_disk_full(err: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `err` means the disk (or quota) is full: ENOSPC/EDQUOT, the same error as a library words
    it, or (when `folder` is given) any OS/runtime write error while `folder`'s disk has < 1 MiB free
    (torch, for one, reports a full disk only as 'file write failed')."""
    if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
        return True
    if any(text in str(err) for text in DISK_FULL_TEXTS):
        return True
    if folder is not None and isinstance(err, (OSError, RuntimeError)):
        try:
            info = os.statvfs(folder)
        except (OSError, AttributeError):
            return False
        return info.f_bavail * info.f_frsize < NEARLY_FULL_BYTES
    return False


def run_main(main: Callable[[], None]) -> None:
    """Run a stage/CLI `main` with logging set up; a FaclipError (or a full disk) becomes one line on
    stderr, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # not its loader's two INFO lines in every command
    try:
        main()
    except FaclipError as err:
        under_dvc = f"; {GO_BACK}" if os.environ.get("DVC_STAGE") else ""  # DVC sets it for a stage's command
        print(f"faclip error: {err}{under_dvc}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if not is_disk_full(err):
            raise
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        print(f"faclip error: no space left on the device{where}; free some space and rerun", file=sys.stderr)
        sys.exit(2)
