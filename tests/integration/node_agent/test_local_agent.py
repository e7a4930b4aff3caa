"""The node agent on a host without Kubernetes: callers known by the kernel, not by a token.

A real agent process (``--auth local``) on two virtual GPUs; callers are real processes
speaking the sidecar's client over the Unix socket. The kernel's ``SO_PEERCRED`` names
them: another UID is refused, a second process cannot take a GPU a live one holds, and a
GPU is reset once the process that claimed it has exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from capinfer.localagent import LocalNodeAgent
from capinfer_sidecar.gpu.agent import NodeAgentClient
from capinfer_sidecar.gpu.virtual import read_controls

GPU_A = "GPU-a0000000-0000-0000-0000-00000000000l"
GPU_B = "GPU-b0000000-0000-0000-0000-00000000000l"
CLOCK = 1303  # a P40 clock level
RESET_BOUND_S = 15.0


def as_other_user(address: str, gpu: str, uid: int) -> str:
    """A forked child that drops to ``uid`` and asks for ``gpu``; what it was told."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_end)
            os.setgid(uid)
            os.setuid(uid)
            try:
                NodeAgentClient(address, None).lock_sm_clock([gpu], CLOCK)
                answer = "ok"
            except Exception as error:
                answer = str(error)
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def run_client(address: str, gpu: str) -> subprocess.CompletedProcess[str]:
    """Another process locking ``gpu``: prints 'ok' or the refusal."""
    code = (
        "import sys\n"
        "from capinfer_sidecar.gpu.agent import NodeAgentClient\n"
        "from capinfer_sidecar.gpu.errors import GpuError\n"
        "try:\n"
        f"    NodeAgentClient({address!r}, None).lock_sm_clock([{gpu!r}], {CLOCK})\n"
        "    print('ok')\n"
        "except GpuError as error:\n"
        "    print(error)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip


def test_processes_steer_gpus_by_uid_one_at_a_time_and_are_reset_when_gone(
    tmp_path: Path,
) -> None:
    controls = {GPU_A: tmp_path / "a.json", GPU_B: tmp_path / "b.json"}
    # A socket other users can reach (pytest's tmp_path is private to its owner).
    socket_dir = Path(tempfile.mkdtemp(prefix="capinfer-agent-"))
    socket_dir.chmod(0o755)
    agent = LocalNodeAgent(socket_dir, "localhost", None, None, controls).start()
    try:
        mine = NodeAgentClient(agent.address, None)
        assert sorted(mine.hello()) == [GPU_A, GPU_B]
        mine.lock_sm_clock([GPU_A], CLOCK)
        assert read_controls(controls[GPU_A])["locked_sm_clock_mhz"] == CLOCK

        other = run_client(agent.address, GPU_A).stdout
        assert "is held by local/pid-" in other, other
        if os.getuid() == 0:
            stranger = as_other_user(agent.address, GPU_B, 65534)
            assert "UID 65534 may not steer GPUs here" in stranger, stranger

        # A process that locks a clock and exits: its GPU is given back.
        exited = time.monotonic()
        assert run_client(agent.address, GPU_B).stdout.strip() == "ok"
        while read_controls(controls[GPU_B]).get("locked_sm_clock_mhz") is not None:
            elapsed = time.monotonic() - exited
            assert elapsed < RESET_BOUND_S, f"not reset after {elapsed:.1f} s"
            time.sleep(0.05)
        print(f"reset {time.monotonic() - exited:.2f} s after the claiming process was started")
        assert read_controls(controls[GPU_A])["locked_sm_clock_mhz"] == CLOCK, "a live claim reset"
    finally:
        assert agent.stop() == 0
        print(agent.log_path.read_text()[-2000:])
    assert read_controls(controls[GPU_A]).get("locked_sm_clock_mhz") is None


def test_local_mode_refuses_tcp(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "capinfer_node_agent.main", "--auth", "local",
         "--listen", "tcp://127.0.0.1:0", "--gpu", "virtual",
         f"--virtual-gpu={GPU_A}={tmp_path / 'a.json'}", "--metrics-address", ""],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "serves Unix sockets only" in result.stderr


pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
