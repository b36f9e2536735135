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
