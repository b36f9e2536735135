"""`audioguard schemas export`: rewrite schemas/*.schema.json from the pydantic models."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(subparsers: Any) -> None:
    schemas = subparsers.add_parser("schemas", help="export the JSON Schema of the contracts")
    schemas_sub = schemas.add_subparsers(dest="schemas_command", required=True)
    export = schemas_sub.add_parser("export", help="write schemas/*.schema.json from the pydantic models")
    export.set_defaults(handler=_schemas_export)


def _schemas_export(args: argparse.Namespace) -> int:
    from schemas import export_json_schemas

    for path in export_json_schemas():
        print(path)
    return 0
