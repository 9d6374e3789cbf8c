"""A PDF statement a tenant can read anywhere: its one font is embedded and has a real glyph for every
character printed (no missing-glyph boxes, checked in the PDF's own font dictionaries and in a page
rendered to PNG), with fen amounts, local minutes and the words on a Chinese utility bill."""

from __future__ import annotations

import base64
import io
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdfium2  # type: ignore[import-untyped]
import pytest
from fontTools.ttLib import TTFont  # type: ignore[import-untyped]

from shuidian_billing.adapters.statement_pdf import (
    charge_description,
    money,
    quantity,
    rate_label,
    render,
    signed_money,
    unit_price,
)

D = Decimal


def statement(name: str = "张三 <3-402>") -> dict[str, Any]:
    """A statement document as `statements.statement` returns it, with the exact values it carries."""
    return {
        "account_id": "A101",
        "name": name,
        "month": "2026-11",
        "timezone": "Asia/Shanghai",
        "period_start": "2026-11-01T00:00:00+08:00",
        "period_end": "2026-12-01T00:00:00+08:00",
        "opening_balance": D("10.00"),
        "closing_balance": D("-3.06"),
        "totals": {
            "payments": D("50.00"),
            "subsidies": D("0.00"),
            "charges": D("63.06"),
            "fees": D("0.00"),
            "refunds": D("0.00"),
            "corrections": D("0.00"),
            "other": D("0.00"),
        },
        "usage": [
            {"utility": "electricity", "quantity": D("102.1234567890"), "unit": "kWh", "charged": D("61.27")},
            {"utility": "water", "quantity": D("1.2000000000"), "unit": "m³", "charged": D("4.74")},
        ],
        "tariff_breakdown": [
            breakdown("electricity", "flat", "flat", "0.600000", "100.1234567890", "60.0740740734"),
            breakdown("electricity", "tou", "peak", "0.8125", "1.5", "1.21875"),
            breakdown("electricity", "tou", "valley", "0.3", "0.5", "0.15"),
            breakdown("water", "阶梯水价", "一档", "3.000000", "1.2000000000", "3.6000000000"),
            breakdown("water", "污水处理费", "污水处理费", "0.950000", "1.2000000000", "1.1400000000"),
        ],
        "lines": {
            "payments": [line("2026-11-03T14:05:06.123456+08:00", "50.00", "wechat", "wx-4200001", "")],
            "subsidies": [],
            "fees": [],
            "refunds": [],
            "corrections": [line("2026-11-20T09:30:00.000001+08:00", "-0.01", None, None, "冲正 · 重复扣费")],
            "other": [],
        },
    }


def breakdown(utility: str, component: str, label: str, price: str, used: str, exact: str) -> dict[str, Any]:
    unit = {"electricity": "kWh", "water": "m³"}[utility]
    return {
        "utility": utility,
        "component": component,
        "label": label,
        "unit_price": D(price),
        "quantity": D(used),
        "unit": unit,
        "amount_exact": D(exact),
    }


def line(at: str, amount: str, channel: str | None, reference: str | None, memo: str) -> dict[str, Any]:
    return {"at": at, "amount": D(amount), "channel": channel, "reference": reference, "memo": memo}


# --- a reader of the PDF's objects, enough for what reportlab writes -------------------------------


@dataclass(frozen=True)
class PdfObject:
    dictionary: str
    stream: bytes | None


def objects(pdf: bytes) -> dict[int, PdfObject]:
    found = {}
    for match in re.finditer(rb"(\d+) 0 obj\s*(.*?)endobj", pdf, re.DOTALL):
        body = match[2]
        head, _, rest = body.partition(b"stream")
        stream = None
        if rest:
            length = re.search(rb"/Length (\d+)", head)
            assert length, head
            data = re.sub(rb"^\r?\n", b"", rest)[: int(length[1])]
            if b"ASCII85Decode" in head:
                data = base64.a85decode(data.strip().removeprefix(b"<~").removesuffix(b"~>"))
            stream = zlib.decompress(data) if b"FlateDecode" in head else data
        found[int(match[1])] = PdfObject(head.decode("latin-1"), stream)
    return found


def reference(dictionary: str, key: str) -> int | None:
    match = re.search(rf"/{key} (\d+) 0 R", dictionary)
    return int(match[1]) if match else None


def to_unicode(cmap: bytes) -> dict[int, str]:
    """Character code → text, from a ToUnicode CMap's bfchar and bfrange sections."""
    text = cmap.decode("latin-1")
    codes: dict[int, str] = {}
    for section in re.findall(r"beginbfchar(.*?)endbfchar", text, re.DOTALL):
        for code, target in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", section):
            codes[int(code, 16)] = bytes.fromhex(target).decode("utf-16-be")
    for section in re.findall(r"beginbfrange(.*?)endbfrange", text, re.DOTALL):
        for low, high, start in re.findall(r"<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>\s*<([0-9A-Fa-f]+)>", section):
            first = ord(bytes.fromhex(start).decode("utf-16-be"))
            for offset, code in enumerate(range(int(low, 16), int(high, 16) + 1)):
                codes[code] = chr(first + offset)
    return codes


@dataclass(frozen=True)
class EmbeddedFont:
    base_font: str
    glyph_of: dict[str, str]  # printed character → glyph name in the embedded font program
    program: TTFont


def fonts(pdf: bytes) -> list[EmbeddedFont]:
    """Every font dictionary of the PDF with its embedded program; fails on a font that is not embedded."""
    table = objects(pdf)
    result = []
    for obj in table.values():
        if not re.search(r"/Type /Font\b", obj.dictionary):
            continue
        base_font = re.search(r"/BaseFont /(\S+)", obj.dictionary)
        assert base_font, obj.dictionary
        descriptor = reference(obj.dictionary, "FontDescriptor")
        assert descriptor is not None, f"{base_font[1]} has no font descriptor: it is not embedded"
        program_ref = reference(table[descriptor].dictionary, "FontFile2")
        assert program_ref is not None, f"{base_font[1]} is not embedded as a TrueType program"
        program = TTFont(io.BytesIO(table[program_ref].stream or b""))
        unicode_ref = reference(obj.dictionary, "ToUnicode")
        assert unicode_ref is not None
        codes = to_unicode(table[unicode_ref].stream or b"")
        glyph_by_code = program["cmap"].tables[0].cmap
        result.append(
            EmbeddedFont(
                base_font[1], {char: glyph_by_code.get(code, ".notdef") for code, char in codes.items()}, program
            )
        )
    return result


def text_of(pdf: bytes) -> str:
    document = pypdfium2.PdfDocument(pdf)
    return "\n".join(page.get_textpage().get_text_range() for page in document)


def ink_of(pdf: bytes, path: Path) -> float:
    """Page 1 rendered to PNG at 100 dpi (kept as an artefact): the share of pixels that are not white."""
    document = pypdfium2.PdfDocument(pdf)
    image = document[0].render(scale=100 / 72).to_pil().convert("L")
    image.save(path)
    histogram: list[int] = image.histogram()
    return 1 - histogram[255] / sum(histogram)


# --- the tests ----------------------------------------------------------------------------------------


def test_the_one_font_is_embedded_and_draws_every_character_printed(tmp_path: Path) -> None:
    pdf = render(statement())
    embedded = fonts(pdf)
    assert [f.base_font.split("+")[-1] for f in embedded] == ["ShuidianSansSC"]
    printed = {c for c in text_of(pdf) if not c.isspace()}
    font = embedded[0]
    assert printed <= set(font.glyph_of), printed - set(font.glyph_of)
    glyphs = font.program["glyf"]
    for char in printed:
        glyph = font.glyph_of[char]
        assert glyph != ".notdef", f"{char!r} is drawn as the missing-glyph box"
        assert glyphs[glyph].numberOfContours != 0, f"{char!r} has an empty glyph"
    assert {"·", "³", "¥", "峰", "谷", "档", "度", "吨", "：", "（"} <= printed
    assert ink_of(pdf, tmp_path / "statement-page-1.png") > 0.01


def test_a_character_the_font_lacks_is_printed_as_a_question_mark_not_a_box() -> None:
    pdf = render(statement(name="王五 \U0001f600 \U000e0100"))
    text = text_of(pdf)
    assert "王五 ? ?" in text
    glyph_of = fonts(pdf)[0].glyph_of
    assert [c for c in text if not c.isspace() and glyph_of[c] == ".notdef"] == []


def test_amounts_in_fen_times_in_local_minutes_and_labels_a_tenant_reads() -> None:
    text = text_of(render(statement()))
    assert not re.search(r"\d\.\d{3,}", text.replace("¥0.8125/度", "")), "an amount or quantity past the fen"
    assert not re.search(r"\d{2}:\d{2}:\d{2}", text), "a time past the minute"
    assert "flat/flat" not in text
    assert "@" not in text
    for expected in [
        "2026年11月",
        "2026-11-01 至 2026-11-30",
        "2026-11-03 14:05",
        "2026-11-20 09:30",
        "¥10.00",
        "-¥3.06",
        "+¥50.00",
        "-¥0.01",
        "102.12 度",
        "1.20 吨",
        "电价 Rate",
        "¥0.60/度",
        "峰时 Peak",
        "¥0.8125/度",
        "¥1.22",  # the peak line's exact ¥1.21875, half up
        "谷时 Off-peak",
        "阶梯水价 · 第一档 Tier 1",
        "¥3.00/吨",
        "污水处理费",
        "微信支付 WeChat Pay wx-4200001",
        "张三 <3-402>",
    ]:
        assert expected in text, expected


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("12.345", "¥12.35"), ("-3.06", "-¥3.06"), ("0", "¥0.00"), ("1234567.8", "¥1,234,567.80"), ("-0.004", "¥0.00")],
)
def test_money_is_shown_to_the_fen(amount: str, shown: str) -> None:
    assert money(D(amount)) == shown


def test_a_movement_carries_its_sign() -> None:
    assert (signed_money(D("50")), signed_money(D("-5.5"))) == ("+¥50.00", "-¥5.50")


@pytest.mark.parametrize(
    ("value", "utility", "shown"),
    [("100.1234567890", "electricity", "100.12 度"), ("0.005", "water", "0.01 吨"), ("3", "water", "3.00 吨")],
)
def test_quantities_in_the_units_on_a_bill(value: str, utility: str, shown: str) -> None:
    assert quantity(D(value), utility) == shown


@pytest.mark.parametrize(
    ("price", "shown"), [("0.600000", "¥0.60/度"), ("0.6125", "¥0.6125/度"), ("1E+1", "¥10.00/度"), ("2", "¥2.00/度")]
)
def test_unit_prices_keep_their_digits_but_no_trailing_zeros(price: str, shown: str) -> None:
    assert unit_price(D(price), "electricity") == shown


@pytest.mark.parametrize(
    ("label", "shown"),
    [
        ("sharp", "尖时 Critical peak"),
        ("Peak", "峰时 Peak"),
        ("峰", "峰时 Peak"),
        ("flat", "平时 Standard"),
        ("平", "平时 Standard"),
        ("valley", "谷时 Off-peak"),
        ("谷", "谷时 Off-peak"),
        ("tier1", "第一档 Tier 1"),
        ("Tier 2", "第二档 Tier 2"),
        ("一档", "第一档 Tier 1"),
        ("第三档", "第三档 Tier 3"),
        ("夏季", "夏季"),
    ],
)
def test_rates_and_tiers_in_a_tenants_words(label: str, shown: str) -> None:
    assert rate_label(label) == shown


@pytest.mark.parametrize(
    ("component", "label", "utility", "shown"),
    [
        ("flat", "flat", "electricity", "电价 Rate"),
        ("flat", "flat", "water", "水价 Rate"),
        ("污水处理费", "污水处理费", "water", "污水处理费"),
        ("tou", "flat", "electricity", "平时 Standard"),
        ("tiered", "tier2", "electricity", "第二档 Tier 2"),
        ("阶梯水价", "二档", "water", "阶梯水价 · 第二档 Tier 2"),
    ],
)
def test_a_charge_line_says_what_it_charges_for(component: str, label: str, utility: str, shown: str) -> None:
    assert charge_description(component, label, utility) == shown
