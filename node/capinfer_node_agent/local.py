"""Callers on a host without Kubernetes: identified by the kernel, not by a token.

Standalone (a workstation, a bench machine, the tests' local pods) there is no API server
to review tokens and no kubelet to say who holds which GPU. The agent then listens on a
Unix socket only and asks the kernel who connected (``SO_PEERCRED``): a process of an
allowed UID may steer the GPUs this agent manages, one process per GPU at a time, and a
GPU is reset once the process that claimed it has exited. A process is named by its PID
and its start time, so a recycled PID is another owner.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from capinfer_node_agent.auth import PodInfo, RefusedError
from capinfer_node_agent.ledger import Owner

LOCAL_NAMESPACE = "local"
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int


def peer_of(sock: socket.socket | None) -> Peer | None:
    """The process at the other end of a Unix socket; None for any other socket."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, _ = _CREDENTIALS.unpack(raw)
    return Peer(pid, uid)


def process_start(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The process's start time in clock ticks since boot; None when it is gone."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_uid(pid: int, start: str) -> str:
    return f"pid:{pid}:{start}"


class LocalProcesses:
    """The processes of this host, in the role pods play in a cluster."""

    def __init__(self, allowed_uids: Collection[int], proc: Path = Path("/proc")) -> None:
        self._allowed = frozenset(allowed_uids)
        self._proc = proc

    def owner(self, peer: Peer | None) -> Owner:
        if peer is None:
            raise RefusedError("without Kubernetes the agent serves Unix sockets only")
        if peer.uid not in self._allowed:
            raise RefusedError(f"UID {peer.uid} may not steer GPUs here")
        start = process_start(peer.pid, self._proc)
        if start is None:
            raise RefusedError(f"process {peer.pid} is gone")
        return Owner(LOCAL_NAMESPACE, f"pid-{peer.pid}", owner_uid(peer.pid, start))

    # -- the Pods protocol ---------------------------------------------------------------
    def by_uid(self, uid: str) -> PodInfo | None:
        return None

    def fetch(self, namespace: str, name: str) -> PodInfo | None:
        return None

    def running_uids(self) -> set[str]:
        found = set()
        for entry in os.scandir(self._proc):
            if entry.name.isdigit():
                start = process_start(int(entry.name), self._proc)
                if start is not None:
                    found.add(owner_uid(int(entry.name), start))
        return found
