"""A RabbitMQ node of the test's own (Debian's rabbitmq-server), to stop, kill and restart.

The shared node on 5672 serves the other test processes, so faults are injected
into a second node: its own name, ports, data directory and config file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pika
import pika.exceptions

from benchmarks.harness import free_port
from tests.support.processes import pids_with_env


class PrivateRabbitmq:
    def __init__(self, directory: Path) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise RuntimeError("rabbitmq-server is not installed (make test installs it)")
        self.directory = directory
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"jobkit-test-{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 60) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n"
        )
        # Debian's rabbitmq-server runs as the rabbitmq user: it must own its files.
        shutil.chown(self.directory, "rabbitmq", "rabbitmq")
        for path in self.directory.rglob("*"):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        self.process = subprocess.Popen(
            ["rabbitmq-server"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        self.wait_until_serving(timeout_s)

    def wait_until_serving(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ctl(self, *args: str) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args], check=True, capture_output=True, timeout=60
        )

    def kill(self) -> None:
        """``kill -9`` of the whole node: the Erlang VM and the scripts around it.

        ``su`` starts the VM in a session of its own, so it is found by the node
        name in its environment, not by process group.
        """
        pids = pids_with_env(f"RABBITMQ_NODENAME={self.node}")
        # Stamped after the /proc scan (slow on a loaded host), when the node dies: the
        # node acks jobs until this moment, and a test's "after the kill" starts here.
        self.killed_at = time.time()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(20)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.ctl("stop")
            self.kill()
