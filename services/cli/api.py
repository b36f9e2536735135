"""`audioguard api serve|keys|openapi`: the HTTP API's server, its client keys, its document."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from services.cli.common import settings_from, transport_flags

_NO_DATABASE = (
    "api: set database.url (AUDIOGUARD_DATABASE__URL=postgresql://user@host:5432/db): API keys and "
    "detections live in PostgreSQL"
)


def add_parser(subparsers: Any) -> None:
    api = subparsers.add_parser(
        "api",
        help="the HTTP API: serve it, manage client keys, write its OpenAPI document",
        description="POST /v1/detections and GET /v1/detections/{id} in front of the pipeline (docs/api.md).",
    )
    sub = api.add_subparsers(dest="api_command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the API under uvicorn until Ctrl-C / SIGTERM",
        description="Migrates the API's tables in database.url, then serves on api.host:api.port. Arrivals "
        "go to the configured transport; verdicts are read from store.url (use the workers' store).",
    )
    transport_flags(serve)
    serve.add_argument("--host", help="listen address (default: settings api.host, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: settings api.port, 8080)")
    serve.set_defaults(handler=_serve)

    keys = sub.add_parser("keys", help="create, list and revoke client API keys (stored hashed)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create",
        help="issue a key for a tenant; the secret is printed once",
        description="Prints the new key's token once (it is stored only as an scrypt hash). Rotate by "
        "creating a new key, moving the client, then revoking the old one.",
    )
    create.add_argument("--tenant", required=True, help="the tenant whose detections the key may create/read")
    create.add_argument("--name", required=True, help="who holds it (shown in `keys list`)")
    create.add_argument(
        "--scope",
        action="append",
        dest="scopes",
        choices=("detections:write", "detections:read"),
        help="repeatable; default: both",
    )
    create.add_argument("--json", action="store_true", help="print JSON instead of text")
    create.set_defaults(handler=_keys_create)
    listing = keys_sub.add_parser("list", help="list keys (never their secrets) as a table")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    listing.set_defaults(handler=_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id", help="the 16 hex characters after agk_")
    revoke.set_defaults(handler=_keys_revoke)

    hooks = sub.add_parser("webhooks", help="list webhook deliveries and send dead ones again")
    hooks_sub = hooks.add_subparsers(dest="webhooks_command", required=True)
    hooks_list = hooks_sub.add_parser("list", help="webhooks as a table (newest first, at most 1000)")
    hooks_list.add_argument("--tenant", help="only this tenant's")
    hooks_list.add_argument("--state", choices=("pending", "delivered", "dead"), help="only in this state")
    hooks_list.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    hooks_list.set_defaults(handler=_webhooks_list)
    hooks_retry = hooks_sub.add_parser(
        "retry", help="send a dead webhook again from its first attempt (a running `api serve` delivers it)"
    )
    hooks_retry.add_argument("detection_id", help="det_...")
    hooks_retry.set_defaults(handler=_webhooks_retry)

    openapi = sub.add_parser("openapi", help="write the OpenAPI document (default api/openapi.json)")
    openapi.add_argument("--output", type=Path, default=None, help="where to write it; '-' for stdout")
    openapi.set_defaults(handler=_openapi)


def _database(args: argparse.Namespace) -> str | None:
    settings = settings_from(args)
    if not settings.database.url:
        print(_NO_DATABASE, file=sys.stderr)
        return None
    return str(settings.database.url)


def _keys(args: argparse.Namespace) -> Any:
    from api.keys import ApiKeys, migrate_api

    url = _database(args)
    if url is None:
        return None
    migrate_api(url)
    return ApiKeys(url)


def _serve(args: argparse.Namespace) -> int:
    from api.server import serve

    settings = settings_from(args)
    if not settings.database.url:
        print(_NO_DATABASE, file=sys.stderr)
        return 2
    serve(settings, host=args.host, port=args.port)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from api.keys import SCOPES

    keys = _keys(args)
    if keys is None:
        return 2
    try:
        issued = keys.create(args.tenant, args.name, tuple(args.scopes or SCOPES))
    except ValueError as error:
        print(f"api keys create: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": issued.key.key_id,
                    "tenant": issued.key.tenant,
                    "token": issued.token,
                    "webhook_secret": issued.webhook_secret,
                }
            )
        )
    else:
        print(f"key {issued.key.key_id} for tenant {issued.key.tenant} ({', '.join(issued.key.scopes)})")
        print(f"token (shown once): {issued.token}")
        print(f"webhook signing secret: {issued.webhook_secret}")
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if keys is None:
        return 2
    rows = keys.list(args.tenant)
    if args.json:
        for key in rows:
            print(
                json.dumps(
                    {
                        "key_id": key.key_id,
                        "tenant": key.tenant,
                        "name": key.name,
                        "scopes": list(key.scopes),
                        "status": key.status,
                        "created_at": key.created_at.isoformat(),
                        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
                    }
                )
            )
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="API keys")
    for column in ("key id", "tenant", "name", "scopes", "status", "created", "revoked"):
        table.add_column(column)
    for key in rows:
        table.add_row(
            key.key_id,
            key.tenant,
            key.name,
            " ".join(key.scopes),
            key.status,
            key.created_at.strftime("%Y-%m-%d %H:%M"),
            key.revoked_at.strftime("%Y-%m-%d %H:%M") if key.revoked_at else "",
        )
    Console().print(table)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if keys is None:
        return 2
    if not keys.revoke(args.key_id):
        print(f"api keys revoke: no active key {args.key_id}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from api.app import OPENAPI_PATH, openapi_document, write_openapi

    if args.output is not None and str(args.output) == "-":
        print(json.dumps(openapi_document(), indent=2, sort_keys=True))
        return 0
    print(write_openapi(args.output or OPENAPI_PATH))
    return 0


def _webhooks_list(args: argparse.Namespace) -> int:
    from api.webhooks import list_webhooks

    if _keys(args) is None:
        return 2
    rows = list_webhooks(settings_from(args).database.url, tenant=args.tenant, state=args.state)
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="webhooks")
    for column in ("detection", "tenant", "url", "state", "attempts", "last error", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["detection_id"]),
            str(row["tenant"]),
            str(row["url"])[:60],
            str(row["state"]),
            str(row["attempts"]),
            str(row["last_error"] or "")[:60],
            str(row["created_at"])[:19],
        )
    Console().print(table)
    return 0


def _webhooks_retry(args: argparse.Namespace) -> int:
    from api.webhooks import retry_webhook

    if _keys(args) is None:
        return 2
    if not retry_webhook(settings_from(args).database.url, args.detection_id):
        print(f"api webhooks retry: no dead webhook for {args.detection_id}", file=sys.stderr)
        return 1
    print(f"webhook for {args.detection_id} queued again")
    return 0
