"""The one user-facing error type, and the wrapper that turns it into a one-line exit."""

import logging
import sys
from typing import Callable


class FaclipError(Exception):
    """A problem the user can fix: the message says what was wrong and what to do."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage/CLI `main` with logging set up; a FaclipError becomes one line on stderr, exit 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except FaclipError as err:
        print(f"faclip error: {err}", file=sys.stderr)
        sys.exit(2)
