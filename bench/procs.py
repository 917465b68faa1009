"""Servers as child processes: free loopback ports, readiness, bounded shutdown, peak memory.

Every server the bench starts goes through :class:`ServerProcess` so that nothing outlives the run,
even when a measurement fails half-way.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback port nobody listens on right now (the usual bind-to-0 race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def http_status(port: int, method: str, path: str, timeout: float = 2.0) -> int | None:
    """The status of one request, or None when nothing answers (yet)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


class ServerProcess:
    """A server child process whose output goes to a log file.

    :param name: shown in error messages.
    :param argv: the command; its first process is the server itself (no shell in between), so
        its ``/proc`` entry is the one whose memory is measured.
    :param log_path: stdout and stderr of the child.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )

    def wait_ready(self, port: int, path: str, deadline_seconds: float) -> None:
        """Poll until the server answers HTTP at all (any status), or fail with its log.

        :raises RuntimeError: the process exited, or did not answer in time.
        """
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            if http_status(port, "HEAD", path, timeout=1.0) is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not answer on port {port} within {deadline_seconds:.0f} s:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as log:
                text = log.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_seconds: float = 5.0) -> None:
        """SIGTERM the child's process group, SIGKILL it after the grace period."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=grace_seconds)


class LoopbackServer:
    """A server child process answering HTTP on one loopback port (what the bench measures)."""

    #: A path it answers (any status) once it is ready.
    ready_path = "/"
    #: Seconds between SIGTERM and SIGKILL.
    stop_grace = 5.0
    port: int
    server: ServerProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        return self.server.pid

    def start(self, deadline_seconds: float = 30.0) -> None:
        self.server.start()
        self.server.wait_ready(self.port, self.ready_path, deadline_seconds)

    def stop(self) -> None:
        self.server.stop(grace_seconds=self.stop_grace)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, its threads included."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its child processes (nginx's workers under their master)."""
    children: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            children.append(int(entry))
    return [pid, *children]


def memory_kib(pid: int) -> dict[str, int]:
    """``VmHWM`` (peak resident) and ``VmRSS`` (resident now) of a process, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(value.split()[0])
    return found


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User plus system CPU time of each thread of a process so far, by thread id (the main
    thread's id is the process id)."""
    found: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        found[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


@contextlib.contextmanager
def pinned_to(pids: Sequence[int], cpu: int) -> Iterator[None]:
    """Every thread of ``pids`` runs on ``cpu`` only inside the block, then where it ran before.

    Threads started inside the block inherit the pin from their creator and keep it.
    """
    before: dict[int, set[int]] = {}
    try:
        for pid in pids:
            for entry in os.listdir(f"/proc/{pid}/task"):
                tid = int(entry)
                with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
                    before[tid] = os.sched_getaffinity(tid)
                    os.sched_setaffinity(tid, {cpu})
        yield
    finally:
        for tid, cpus in before.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(tid, cpus)
