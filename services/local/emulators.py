"""Local stand-ins for the cloud services: Google's Pub/Sub emulator and `moto_server`,
and the process handling they share with the embedded Kafka broker (services.local.broker).

Both are real servers started as subprocesses on free loopback ports: the Pub/Sub
emulator through `gcloud beta emulators pubsub start` (Java), moto in server mode for
Kinesis and S3. The demo, the CLI and the tests use them; a real deployment points
`pubsub.emulator_host` / `kinesis.endpoint_url` / `storage.s3_endpoint_url` elsewhere
(or nowhere).

Each server runs in its own process group (gcloud forks the JVM), so `stop()` ends that
group and nothing else. This module starts and stops processes; it must never talk
Pub/Sub, Kinesis or S3 itself (no SDK import here) and never touch a process it did not
start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["EmulatorError", "MlflowServer", "MotoServer", "PubSubEmulator", "ServerProcess", "free_port"]


class EmulatorError(RuntimeError):
    """The server could not be started (program missing, exited early, never became ready)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A subprocess in its own session, answering HTTP on host:port once it is ready."""

    name = "server"

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe: the server answered an HTTP GET on its root."""
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.port}/", timeout=1.0) as response:
                return int(response.status) < 500
        except urllib.error.HTTPError as exc:
            # moto answers 404 on some roots: it is up, which is all we need to know
            return exc.code < 500
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> Self:
        if self.running:
            return self
        command = self._command()
        if shutil.which(command[0]) is None:
            raise EmulatorError(f"{command[0]!r} is not installed (needed to start the {self.name})")
        if self.log_path is not None:
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=self._env(),
            # own process group: gcloud forks a JVM, and stop() must end both, nothing else
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        try:
            while not self._ready():
                if self._process.poll() is not None:
                    raise EmulatorError(
                        f"the {self.name} exited with {self._process.returncode} before it was ready"
                        + (f" (log: {self.log_path})" if self.log_path else "")
                    )
                if time.monotonic() > deadline:
                    raise EmulatorError(
                        f"the {self.name} was not ready on {self.host}:{self.port} after {timeout:.0f}s"
                    )
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server's process group, SIGKILL it if it lingers. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
            # the JVM may outlive its gcloud parent by a moment: make sure the group is gone
            _wait_group_gone(process.pid, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class PubSubEmulator(ServerProcess):
    """Google's Pub/Sub emulator (`gcloud beta emulators pubsub start`), memory only.

    Clients reach it through `PUBSUB_EMULATOR_HOST=<host_port>` (set
    `pubsub.emulator_host` in the settings and the adapter does it).
    """

    name = "Pub/Sub emulator"

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", log_path: Path | None = None
    ) -> None:
        super().__init__(port, host, log_path)
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        # gcloud writes env.yaml into --data-dir, which must exist; a private temp dir keeps
        # parallel emulators (and the user's ~/.config/gcloud) apart
        self._data_dir = tempfile.TemporaryDirectory(prefix="audioguard-pubsub-")
        return [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port={self.host_port}",
            f"--data-dir={self._data_dir.name}",
            "--quiet",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # no prompts, no usage reporting, no update checks: the machine may be offline
        env["CLOUDSDK_CORE_DISABLE_PROMPTS"] = "1"
        env["CLOUDSDK_CORE_DISABLE_USAGE_REPORTING"] = "true"
        env["CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK"] = "true"
        return env

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self._data_dir is not None:
            self._data_dir.cleanup()
            self._data_dir = None


class MotoServer(ServerProcess):
    """`moto_server` in server mode: Kinesis and S3 (and the rest of AWS) for boto3.

    Any credentials work; point boto3 at `endpoint_url`.
    """

    name = "moto server"

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        # the moto_server of *this* interpreter: a `moto_server` on PATH may belong to another
        return [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]

    def reset(self) -> None:
        """Forget every stream, bucket and object (moto's own reset endpoint)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5.0):
            pass


class MlflowServer(ServerProcess):
    """An MLflow tracking server (`mlflow server`, the registry's production backend): its SQL
    store in `backend_store_uri` (PostgreSQL: `postgresql+psycopg://...`, the psycopg 3 driver
    this project installs), artifacts proxied to `artifacts_destination` (e.g. `s3://bucket/x`
    on moto_server at `s3_endpoint_url`). Clients need only its URL, `tracking_uri`."""

    name = "MLflow tracking server"

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str,
        *,
        s3_endpoint_url: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
    ) -> None:
        super().__init__(port, host, log_path)
        if backend_store_uri.startswith("postgresql://"):
            backend_store_uri = "postgresql+psycopg://" + backend_store_uri[len("postgresql://") :]
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.s3_endpoint_url = s3_endpoint_url

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", self.host, "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--workers", "1",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
            env.setdefault("AWS_ACCESS_KEY_ID", "testing")
            env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
            env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        return env

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=1.0) as response:
                return int(response.status) == 200
        except OSError:
            return False
