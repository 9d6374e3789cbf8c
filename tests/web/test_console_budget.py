"""The staff console's size budget (web/budget.json, "console"): the gzipped JS and CSS its first page
names (entry script, preloaded chunks, stylesheet) and the largest chunk of the build. Read from the
build itself, so it needs neither a browser nor the platform; a whole-library import that grows the
entry fails here."""

from __future__ import annotations

import gzip
import json
import os
import re
from pathlib import Path
from typing import Any

from tests.web.conftest import REPO, built_front_end

BUDGET: dict[str, Any] = json.loads((REPO / "web" / "budget.json").read_text())["console"]
KB = 1024


def gzipped_kb(path: Path) -> float:
    return len(gzip.compress(path.read_bytes(), compresslevel=9)) / KB


def build() -> Path:
    root = os.environ.get("GATEWAY_WEB_ROOT")
    return Path(root) if root else built_front_end()


def test_the_consoles_first_page_and_largest_chunk_are_within_budget() -> None:
    dist = build()
    named = re.findall(r'/assets/([^"]+\.(?:js|css))"', (dist / "console.html").read_text())
    assert any(name.startswith("console") and name.endswith(".js") for name in named), named
    entry_kb = sum(gzipped_kb(dist / "assets" / name) for name in named)
    chunks = {p.name: gzipped_kb(p) for p in (dist / "assets").iterdir() if p.suffix in (".js", ".css")}
    largest = max(chunks, key=chunks.__getitem__)
    report = {"entry": sorted(named), "entry_js_css_gzip_kb": round(entry_kb, 1), "largest": largest}
    assert entry_kb <= BUDGET["entry_js_css_gzip_kb"], report
    assert chunks[largest] <= BUDGET["largest_chunk_gzip_kb"], report


def test_precompressed_variants_sit_beside_the_large_assets() -> None:
    """The build writes .br and .gz for the gateway to send as they are (shuidian_gateway.webui)."""
    assets = build() / "assets"
    large = [p for p in assets.iterdir() if p.suffix in (".js", ".css") and p.stat().st_size >= 10 * KB]
    assert large
    missing = [
        p.name for p in large if not (p.with_name(p.name + ".gz").is_file() and p.with_name(p.name + ".br").is_file())
    ]
    assert missing == []
    biggest = max(large, key=lambda p: p.stat().st_size)
    assert gzip.decompress(biggest.with_name(biggest.name + ".gz").read_bytes()) == biggest.read_bytes()
