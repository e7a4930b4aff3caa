"""Start, find and stop the daemons of a local cluster.

Each daemon runs in a session of its own, so it outlives ``capinfer cluster up`` and so
``down`` can stop it with everything it spawned. A pid is only signalled while its start
time still matches the recorded one: a reused pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DaemonRecord:
    """What is needed to find a daemon again from another process."""

    name: str
    pid: int
    start_ticks: int
    """Field 22 of /proc/<pid>/stat: the process start time, to tell a reused pid."""
    log_path: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "log_path": self.log_path,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DaemonRecord:
        return cls(
            name=str(data["name"]),
            pid=int(str(data["pid"])),
            start_ticks=int(str(data["start_ticks"])),
            log_path=str(data["log_path"]),
        )


def _proc_stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' is split safely.
    after_name = raw[raw.rindex(")") + 2 :].split()
    return [raw[: raw.index(" ")], raw[raw.index("(") + 1 : raw.rindex(")")], *after_name]


def start_ticks_of(pid: int) -> int | None:
    fields = _proc_stat(pid)
    return int(fields[21]) if fields else None


def is_running(record: DaemonRecord) -> bool:
    """True while the recorded process exists, is not a zombie and is the same process."""
    fields = _proc_stat(record.pid)
    if fields is None or fields[2] in ("Z", "X"):
        return False
    return int(fields[21]) == record.start_ticks


def start_daemon(
    name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> tuple[DaemonRecord, subprocess.Popen[bytes]]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    ticks = start_ticks_of(process.pid)
    if ticks is None:
        process.wait()
        raise RuntimeError(
            f"{name} exited at once (exit code {process.returncode}); see {log_path}"
        )
    return DaemonRecord(name, process.pid, ticks, str(log_path)), process


def _signal_group(record: DaemonRecord, signum: int) -> None:
    if not is_running(record):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signum)


def stop_daemons(
    records: Sequence[DaemonRecord],
    handles: Mapping[int, subprocess.Popen[bytes]] | None = None,
    grace_s: float = 10.0,
) -> None:
    """SIGTERM every daemon's process group, wait, then SIGKILL what is left.

    ``handles`` (pid → Popen) lets the process that started the daemons reap them, so
    they do not linger as zombies.
    """
    handles = handles or {}
    for record in reversed(records):
        _signal_group(record, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    pending = list(records)
    while pending and time.monotonic() < deadline:
        for record in list(pending):
            handle = handles.get(record.pid)
            if handle is not None:
                handle.poll()
            if not is_running(record):
                pending.remove(record)
        if pending:
            time.sleep(0.1)
    for record in pending:
        _signal_group(record, signal.SIGKILL)
    for record in records:
        # The group may hold children that outlived their leader: end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGKILL)
        handle = handles.get(record.pid)
        if handle is not None:
            handle.wait()
