"""`audioguard api serve`: the app under uvicorn, with its tables migrated first."""

from __future__ import annotations

import uvicorn

from api.app import create_app, open_context
from api.keys import migrate_api
from services.settings import Settings


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, workers: int = 1) -> None:
    """Migrate the API's tables, then serve until SIGINT / SIGTERM (uvicorn drains open requests)."""
    assert settings.database.url
    migrate_api(settings.database.url)
    context = open_context(settings)
    try:
        uvicorn.run(
            create_app(context),
            host=host or settings.api.host,
            port=port or settings.api.port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
    finally:
        context.close()


class ServerThread:
    """The API under uvicorn on a thread of this process, on a free loopback port unless told
    otherwise: `demo --api` and the tests. Stopping it closes the context."""

    def __init__(
        self, settings: Settings, *, host: str = "127.0.0.1", port: int = 0, webhooks: bool = True
    ) -> None:
        import socket
        import threading

        assert settings.database.url
        migrate_api(settings.database.url)
        if port == 0:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        self.host, self.port = host, port
        self.context = open_context(settings, webhooks=webhooks)
        config = uvicorn.Config(
            create_app(self.context), host=host, port=port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.close()
                raise RuntimeError(f"the API did not start on {self.url}")
            time.sleep(0.02)
        return self

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(15)
        self.context.close()

    def __exit__(self, *exc: object) -> None:
        self.close()
