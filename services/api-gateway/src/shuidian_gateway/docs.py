"""`python -m shuidian_gateway.docs [DIR]`: write openapi.json and asyncapi.json (default: docs/api)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shuidian_gateway.api.asyncapi import document
from shuidian_gateway.app import create_app
from shuidian_gateway.settings import GatewaySettings


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    app = create_app(GatewaySettings())
    written = []
    for name, doc in (("openapi.json", app.openapi()), ("asyncapi.json", document(app.version))):
        path = directory / name
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/api")):
        sys.stdout.write(f"wrote {path}\n")
