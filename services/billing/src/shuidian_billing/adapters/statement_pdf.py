"""A monthly statement (月结单) as a PDF a tenant can read on any device: zh-CN first with English
glosses, the Chinese font embedded, amounts in fen (¥12.34), local dates to the minute, and tariff
lines in the words on a Chinese utility bill (峰/平/谷/尖, 第一档, 度, 吨).

The font is Noto Sans CJK SC from the `noto-cjk-sans-otc` package (SIL Open Font License). Its
outlines are PostScript (CFF), which reportlab cannot embed, so each render converts only the glyphs
the statement prints into a small TrueType font (quadratic curves, via fontTools) and reportlab
embeds a subset of that. Converted glyphs are kept for the life of the process; the collection is
opened on the first render (about a second), never at import.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any
from xml.sax.saxutils import escape

import noto_cjk_sans_otc  # type: ignore[import-untyped]
from fontTools.fontBuilder import FontBuilder  # type: ignore[import-untyped]
from fontTools.pens.cu2quPen import Cu2QuPen  # type: ignore[import-untyped]
from fontTools.pens.ttGlyphPen import TTGlyphPen  # type: ignore[import-untyped]
from fontTools.ttLib import TTFont as OpenTypeFont  # type: ignore[import-untyped]
from reportlab.lib import colors  # type: ignore[import-untyped]
from reportlab.lib.pagesizes import A4  # type: ignore[import-untyped]
from reportlab.lib.styles import ParagraphStyle  # type: ignore[import-untyped]
from reportlab.lib.units import mm  # type: ignore[import-untyped]
from reportlab.pdfbase import pdfmetrics  # type: ignore[import-untyped]
from reportlab.pdfbase.ttfonts import TTFont  # type: ignore[import-untyped]
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle  # type: ignore[import-untyped]

FONT_NAME = "ShuidianSansSC"
SIMPLIFIED_CHINESE = 2  # the collection's faces: JP, KR, SC, TC, HK, then the Mono ones
MISSING = "?"  # printed instead of a character the font lacks (an emoji in a name), never a box
FEN = Decimal("0.01")

UTILITY = {"electricity": "电 Electricity", "water": "水 Water"}
UNIT = {"electricity": "度", "water": "吨"}
UNIT_GLOSS = {"electricity": "kWh", "water": "m³"}
CHANNEL = {
    "cash": "现金 Cash",
    "bank": "银行转账 Bank transfer",
    "wechat": "微信支付 WeChat Pay",
    "alipay": "支付宝 Alipay",
    "sandbox": "沙箱 Sandbox",
}
# Time-of-use rates as operators name them, in English or Chinese.
TIME_OF_USE = {
    "sharp": "尖时 Critical peak",
    "critical": "尖时 Critical peak",
    "尖": "尖时 Critical peak",
    "peak": "峰时 Peak",
    "峰": "峰时 Peak",
    "shoulder": "平时 Standard",
    "flat": "平时 Standard",
    "平": "平时 Standard",
    "valley": "谷时 Off-peak",
    "off-peak": "谷时 Off-peak",
    "谷": "谷时 Off-peak",
    "deep-valley": "深谷 Deep off-peak",
    "深谷": "深谷 Deep off-peak",
}
TIER = re.compile(r"^(?:tier|block|第)?\s*([1-9]|[一二三四五六七八九])\s*(?:档)?$", re.IGNORECASE)
CHINESE_NUMERALS = "一二三四五六七八九"
# Component names the tariff editor gives by default: said by the line's own label, not repeated.
DEFAULT_COMPONENTS = {"flat", "tou", "time_of_use", "tiered", "tier"}
USAGE_TITLE = "用量与计价 Usage and tariff"
MOVEMENTS_TITLE = "缴费与其他变动 Payments and other movements"
SECTIONS = {
    "payments": "缴费 Payment",
    "subsidies": "补贴 Subsidy",
    "fees": "固定费用与公摊 Fee",
    "refunds": "退款 Refund",
    "corrections": "冲正 Correction",
    "other": "其他 Other",
}


def money(amount: Decimal | str | int) -> str:
    """Yuan to the fen, half up, with its sign before the currency: ¥12.34, -¥3.06."""
    fen = Decimal(amount).quantize(FEN, rounding=ROUND_HALF_UP)
    return f"-¥{-fen:,}" if fen < 0 else f"¥{abs(fen):,}"  # abs: -0.004 is ¥0.00, not ¥-0.00


def signed_money(amount: Decimal | str | int) -> str:
    """A movement of the balance: +¥50.00 in, -¥3.06 out."""
    text = money(amount)
    return text if text.startswith("-") else "+" + text


def quantity(value: Decimal | str | int, utility: str) -> str:
    """A metered quantity to two decimals in the unit on the bill: 12.35 度."""
    rounded = Decimal(value).quantize(FEN, rounding=ROUND_HALF_UP)
    return f"{rounded:,} {UNIT.get(utility, '')}".strip()


def unit_price(value: Decimal | str | int, utility: str) -> str:
    """A price per unit, at least to the fen and never with trailing zeros past it: ¥0.613/度."""
    price = Decimal(value).normalize()
    if -price.as_tuple().exponent < 2:  # type: ignore[operator]
        price = price.quantize(FEN)
    return f"¥{price}/{UNIT.get(utility, '')}"


def local_minute(iso: str) -> str:
    """An instant as local wall time to the minute (the document's instants carry their offset)."""
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")


def local_day(iso: str) -> str:
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d")


def period_text(start_iso: str, end_iso: str) -> str:
    """The statement's month as the first and last local day (the end bound is exclusive)."""
    last_day = datetime.fromisoformat(end_iso) - timedelta(microseconds=1)
    return f"{local_day(start_iso)} 至 {last_day:%Y-%m-%d}"


def rate_label(label: str) -> str:
    """A time-of-use rate or tier as a tenant says it: 峰时 Peak, 第一档 Tier 1."""
    key = label.strip().lower()
    if key in TIME_OF_USE:
        return TIME_OF_USE[key]
    tier = TIER.match(key)
    if tier:
        digit = tier[1]
        number = int(digit) if digit.isdigit() else CHINESE_NUMERALS.index(digit) + 1
        return f"第{CHINESE_NUMERALS[number - 1]}档 Tier {number}"
    return label


def charge_description(component: str, label: str, utility: str) -> str:
    """What one tariff line charges for: the rate or tier, under the operator's name for the component."""
    if label == component:  # a single-price component (flat price, sewage fee …) is labelled by its name
        if component in DEFAULT_COMPONENTS:
            return {"electricity": "电价 Rate", "water": "水价 Rate"}.get(utility, "单价 Rate")
        return component
    described = rate_label(label)
    return described if component in DEFAULT_COMPONENTS else f"{component} · {described}"


@dataclass(frozen=True, slots=True)
class Layout:
    """Everything the PDF prints, as text: built first so the font can carry exactly these characters."""

    title: str
    heading: list[str]
    summary: list[list[str]]
    usage: list[list[str]]
    movements: list[list[str]]
    notes: list[str]

    def characters(self) -> set[str]:
        rows = [*self.summary, *self.usage, *self.movements]
        texts = [self.title, *self.heading, *self.notes, USAGE_TITLE, MOVEMENTS_TITLE]
        return set("".join([*texts, *(cell for row in rows for cell in row)]))


def layout(doc: Mapping[str, Any]) -> Layout:
    """The statement document (`statements.statement`) as the lines and tables a tenant reads."""
    totals = doc["totals"]
    summary = [
        [
            "期初余额 Opening balance",
            money(doc["opening_balance"]),
            "期末余额 Closing balance",
            money(doc["closing_balance"]),
        ],
        ["缴费 Payments", money(totals["payments"]), "用量费用 Usage charges", money(totals["charges"])],
        ["补贴 Subsidies", money(totals["subsidies"]), "固定费用与公摊 Fees", money(totals["fees"])],
        ["冲正 Corrections", money(totals["corrections"]), "退款 Refunds", money(totals["refunds"])],
    ]
    usage: list[list[str]] = [["项目 Item", "用量 Usage", "单价 Price", "金额 Amount"]]
    for used in doc["usage"]:
        utility = used["utility"]
        usage.append(
            [
                f"{UTILITY.get(utility, utility)}（{UNIT.get(utility, '')} {UNIT_GLOSS.get(utility, '')}）",
                quantity(used["quantity"], utility),
                "",
                money(used["charged"]),
            ]
        )
        for line in doc["tariff_breakdown"]:
            if line["utility"] == utility:
                usage.append(
                    [
                        "· " + charge_description(line["component"], line["label"], utility),
                        quantity(line["quantity"], utility),
                        unit_price(line["unit_price"], utility),
                        money(line["amount_exact"]),
                    ]
                )
    movements: list[list[str]] = [["时间 Time", "类别 Kind", "说明 Details", "金额 Amount"]]
    for section, kind in SECTIONS.items():
        for line in doc["lines"].get(section, []):
            details = [CHANNEL.get(line.get("channel") or "", ""), line.get("reference") or line.get("memo") or ""]
            movements.append(
                [local_minute(line["at"]), kind, " ".join(d for d in details if d), signed_money(line["amount"])]
            )
    if len(movements) == 1:
        movements.append(["", "本月无缴费或其他变动 No payments or other movements this month", "", ""])
    month = datetime.fromisoformat(doc["period_start"])
    return Layout(
        title=f"水电费月结单 Monthly statement · {month.year}年{month.month}月",
        heading=[
            f"户号 Account：{doc['account_id']} · {doc['name']}",
            f"账期 Period：{period_text(doc['period_start'], doc['period_end'])}（{doc['timezone']}）",
        ],
        summary=summary,
        usage=usage,
        movements=movements,
        notes=[
            "用电按度（kWh）、用水按吨（m³）计。明细金额四舍五入到分，每小时实际扣费按分向零舍入、余数结转下一小时，"
            "故明细之和与用量费用可能相差几分，以用量费用为准。",
            "Electricity is in kWh (度), water in m³ (吨). Line amounts are rounded to the fen; each hour's charge "
            "is posted in whole fen and its remainder carried to the next hour, so the lines may differ from "
            "the usage charge by a few fen: the usage charge is what was taken from the balance.",
            "金额按入账时间计入当月。Money is counted in the month it was booked.",
        ],
    )


# --- the font ---------------------------------------------------------------------------------------


@cache
def _collection_face() -> OpenTypeFont:
    """Noto Sans CJK SC out of the package's collection (opened lazily: tables load as they are read)."""
    return OpenTypeFont(str(noto_cjk_sans_otc.FONT_PATH), fontNumber=SIMPLIFIED_CHINESE, lazy=True)


_glyphs: dict[str, tuple[Any, int, int]] = {}  # glyph name → (TrueType glyph, advance, left side bearing)


def _truetype_glyph(face: OpenTypeFont, name: str) -> tuple[Any, int, int]:
    if name not in _glyphs:
        pen = TTGlyphPen(None)
        # Cubic to quadratic within a hundredth of the 1000-unit em; TrueType winds the other way.
        face.getGlyphSet()[name].draw(Cu2QuPen(pen, max_err=1.0, reverse_direction=True))
        glyph = pen.glyph()
        advance, _ = face["hmtx"][name]
        glyph.recalcBounds(None)
        _glyphs[name] = (glyph, advance, getattr(glyph, "xMin", 0))
    return _glyphs[name]


def font_for(characters: Iterable[str]) -> tuple[bytes, set[str]]:
    """A TrueType font carrying exactly `characters` (those the face has), and the ones it lacks."""
    face = _collection_face()
    cmap: dict[int, str] = face.getBestCmap()
    wanted = sorted({c for c in characters if c not in "\n\r\t"})
    present = [c for c in wanted if ord(c) in cmap]
    missing = {c for c in wanted if ord(c) not in cmap}
    order = [".notdef", *sorted({cmap[ord(c)] for c in present})]
    glyphs = {name: _truetype_glyph(face, name) for name in order}
    units = face["head"].unitsPerEm
    builder = FontBuilder(units, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({ord(c): cmap[ord(c)] for c in present})
    builder.setupGlyf({name: glyph for name, (glyph, _, _) in glyphs.items()})
    builder.setupHorizontalMetrics({name: (advance, lsb) for name, (_, advance, lsb) in glyphs.items()})
    hhea = face["hhea"]
    builder.setupHorizontalHeader(ascent=hhea.ascent, descent=hhea.descent)
    builder.setupNameTable({"familyName": "Shuidian Sans SC", "styleName": "Regular", "psName": FONT_NAME})
    os2 = face["OS/2"]
    builder.setupOS2(
        sTypoAscender=os2.sTypoAscender,
        sTypoDescender=os2.sTypoDescender,
        usWinAscent=os2.usWinAscent,
        usWinDescent=os2.usWinDescent,
        fsType=0,  # installable embedding, as the Open Font License allows
    )
    builder.setupPost()
    out = io.BytesIO()
    builder.save(out)
    return out.getvalue(), missing


# --- the document -----------------------------------------------------------------------------------

# reportlab finds fonts by name in one process-wide registry: renders take turns, each registering
# the font of its own characters under the one name and unregistering it when done.
_render_turn = threading.Lock()


def _table(rows: Sequence[Sequence[str]], widths: Sequence[float], style: ParagraphStyle, money_columns: int) -> Table:
    cells = [[Paragraph(escape(cell), style) for cell in row] for row in rows]
    table = Table(cells, colWidths=list(widths), repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONTNAME", (0, 0), (-1, -1), FONT_NAME),  # a cell's own default is Helvetica
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("ALIGN", (-money_columns, 0), (-1, -1), "RIGHT"),
            ]
        )
    )
    return table


def render(doc: Mapping[str, Any]) -> bytes:
    """The statement as an A4 PDF with its font embedded (a subset: a one-page statement is some 25 kB)."""
    printed = layout(doc)
    with _render_turn:
        font, missing = font_for(printed.characters())
        if missing:
            printed = layout(_replace_missing(doc, missing))
            font, _ = font_for(printed.characters())
        embedded = TTFont(FONT_NAME, io.BytesIO(font))
        pdfmetrics.registerFont(embedded)
        try:
            return _build(printed, doc)
        finally:
            embedded.unregister()  # a registered name is never replaced: the next render brings its own


async def render_pdf(doc: Mapping[str, Any]) -> bytes:
    """`render` off the event loop: the first render opens the font collection."""
    return await asyncio.to_thread(render, doc)


def _replace_missing(doc: Mapping[str, Any], missing: set[str]) -> dict[str, Any]:
    """The document with every character the font lacks in its free text (names, references) replaced."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return "".join(MISSING if c in missing else c for c in value)
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    cleaned: dict[str, Any] = clean(doc)
    return cleaned


def _build(printed: Layout, doc: Mapping[str, Any]) -> bytes:
    base = ParagraphStyle("base", fontName=FONT_NAME, bulletFontName=FONT_NAME)
    title = ParagraphStyle("title", base, fontSize=15, leading=21, spaceAfter=2 * mm)
    body = ParagraphStyle("body", base, fontSize=9.5, leading=14)
    cell = ParagraphStyle("cell", base, fontSize=8.5, leading=12)
    section = ParagraphStyle("section", base, fontSize=11, leading=16, spaceBefore=4 * mm)
    note = ParagraphStyle("note", base, fontSize=7.5, leading=11, textColor=colors.dimgrey)
    buffer = io.BytesIO()
    pdf = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=f"水电费月结单 Statement {doc['account_id']} {doc['month']}",
        author="Shuidian 水电",
        initialFontName=FONT_NAME,  # else reportlab lists Helvetica, which no reader is sure to have
    )
    story = [
        Paragraph(escape(printed.title), title),
        *(Paragraph(escape(line), body) for line in printed.heading),
        Spacer(1, 3 * mm),
        _table(printed.summary, [45 * mm, 45 * mm, 45 * mm, 45 * mm], cell, 1),
        Paragraph(USAGE_TITLE, section),
        _table(printed.usage, [80 * mm, 35 * mm, 35 * mm, 30 * mm], cell, 1),
        Paragraph(MOVEMENTS_TITLE, section),
        _table(printed.movements, [32 * mm, 38 * mm, 80 * mm, 30 * mm], cell, 1),
        Spacer(1, 3 * mm),
        *(Paragraph(escape(line), note) for line in printed.notes),
    ]
    pdf.build(story)
    return buffer.getvalue()
