"""One writer per report folder: a lock file naming the run that holds it.

``OUT/harness.lock`` holds the holder's pid, host, command and start time. A second run
on the same folder refuses to start (SettingsError, one line naming the holder) unless
``force``. A lock left by a process that is gone (kill -9, a crash) is stale: on the same
host that is detected (the pid is dead, or now another process) and the lock is taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from harness.campaign.settings import SettingsError

__all__ = ["LOCK_FILE", "FolderLock", "FolderLocked", "holder", "is_stale"]

LOCK_FILE = "harness.lock"


class FolderLocked(SettingsError):
    """Another live run holds the folder."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux /proc), to tell a reused pid apart; None elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    now = _process_start(pid)
    return started is None or now is None or now == started


def holder(folder: Path) -> dict | None:
    """The lock's contents, or None when the folder is not locked (or the lock is unreadable)."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict) -> str:
    return (f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')} "
            f"({info.get('command') or 'no command recorded'})")  # fmt: skip


def is_stale(info: dict | None) -> bool:
    """Whether a lock's holder is known to be gone (a dead or reused pid on this host)."""
    if info is None:
        return True  # unreadable: a writer died between creating and filling it
    if info.get("host") != socket.gethostname():
        return False  # cannot tell; --force takes it over
    return not _alive(int(info.get("pid", -1)), info.get("pid_start"))


class FolderLock:
    """Context manager holding ``folder``'s lock; raises FolderLocked when a live run holds it."""

    def __init__(self, folder: Path, command: str = "", force: bool = False) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.force = force
        self.info = {
            "pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid_start": _process_start(os.getpid()),
        }  # fmt: skip

    def _create(self) -> bool:
        """Atomically create the lock file with our contents; False if one exists."""
        tmp = self.path.with_name(f".{LOCK_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.info, indent=2) + "\n")
        try:
            os.link(tmp, self.path)  # fails if the lock exists: no window with a half-written lock
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive creation, then the contents
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(self.info, indent=2) + "\n")
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> FolderLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                return self
            info = holder(self.path.parent)
            if info is not None and info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
                raise FolderLocked(f"{self.path.parent} is already in use by this process")
            if not (self.force or is_stale(info)):
                raise FolderLocked(f"{self.path.parent} is in use by {_describe(info)}; wait for it to end, "
                                   "or pass --force if it is gone")  # fmt: skip
            # move the old lock aside first: of two runs taking over at once, one rename fails
            aside = self.path.with_name(f".{LOCK_FILE}.stale.{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                continue
            try:
                moved = json.loads(aside.read_text())
            except (OSError, ValueError):
                moved = None
            if moved != info and moved is not None:  # another run took it over meanwhile: give it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            time.sleep(0.01)
        raise FolderLocked(f"could not lock {self.path.parent}: another run keeps taking it")

    def release(self) -> None:
        info = holder(self.path.parent)
        if info is not None and info.get("pid") == self.info["pid"] and info.get("started") == self.info["started"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
