"""Start a script as 2 gloo ranks on this machine (torchrun's environment variables) and wait for both."""

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(script, *args: str, timeout: float = 300) -> None:
    """Run `python script args...` as ranks 0 and 1 of one process group; fail with a rank's stderr."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
        )
        for rank in range(2)
    ]
    for process in ranks:
        _, stderr = process.communicate(timeout=timeout)
        assert process.returncode == 0, stderr.decode()[-3000:]
