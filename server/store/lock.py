"""One server per data_dir: an exclusive lock on `data_dir/aiproc.lock` held while it runs.

Two processes sharing one SQLite store would each run the other's tasks and
deliver its results; the second one is refused at start instead.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_FILE = "aiproc.lock"


class DataDirInUse(OSError):
    """Another process holds the data_dir."""


class DataDirLock:
    """Holds the lock from `__enter__` to `__exit__`; the OS releases it if the process dies."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"data_dir {self.path.parent} is in use by another aiproc process"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __repr__(self) -> str:
        return f"<DataDirLock {self.path} {'held' if self._fd is not None else 'free'}>"
