"""Pure parts of payments and statements, table-driven: bank CSV parsing, Alipay's signed content
and form decoding, the sandbox's WeChat-v3 round trip, platform certificate rotation, statement
periods and sections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from shuidian_billing.adapters.payments.bank import StatementInvalid, parse_statement
from shuidian_billing.adapters.payments.online import Providers
from shuidian_billing.adapters.payments.providers import Notification, parse_form, verify_wechat
from shuidian_billing.adapters.payments.sandbox import Sandbox
from shuidian_billing.adapters.payments.signing import alipay_content, new_private_key, public_pem
from shuidian_billing.adapters.payments.wechat_emulator import WechatOrder, WechatPayEmulator
from shuidian_billing.adapters.statements import Period, section_of
from shuidian_billing.errors import CallbackRejected
from shuidian_billing.settings import BillingSettings

SHANGHAI = ZoneInfo("Asia/Shanghai")
SANDBOX = Sandbox(new_private_key(), b"0123456789abcdef0123456789abcdef")


def test_bank_statement_in_gb18030_with_chinese_headers() -> None:
    data = '交易日期,交易流水号,付款人,贷方金额,摘要\n2026-11-20,T1,张三,"1,000.50",RM-1 水电\n2026-11-20,T2,银行,0.00,利息\n'
    lines, skipped = parse_statement(data.encode("gb18030"))
    assert skipped == 1
    [line] = lines
    assert (line.key, line.amount, line.payer, line.tokens()) == ("txn:T1", Decimal("1000.50"), "张三", {"RM-1"})


def test_identical_lines_without_bank_ids_stay_distinct_and_stable() -> None:
    data = b"\xef\xbb\xbfdate,amount,memo\n2026-11-20,10.00,acc-1\n2026-11-20,10.00,acc-1\n"
    first, _ = parse_statement(data)
    again, _ = parse_statement(data)
    assert [x.key for x in first] == [x.key for x in again]
    assert len({x.key for x in first}) == 2


@pytest.mark.parametrize(
    ("memo", "tokens"),
    [
        ("缴费 acc-1.", {"ACC-1"}),
        ("3-402房，SDPAY01；", {"3-402", "SDPAY01"}),
        ("水电费", set()),
        ("a_b:c-", {"A_B:C"}),
    ],
)
def test_memo_tokens(memo: str, tokens: set[str]) -> None:
    [line], _ = parse_statement(f"date,amount,memo\n2026-11-20,1.00,{memo}\n".encode())
    assert line.tokens() == tokens


@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_are_refused_cleanly(data: bytes) -> None:
    try:
        lines, _ = parse_statement(data)
    except StatementInvalid:
        return
    assert all(line.amount > 0 for line in lines)


def test_alipay_content_sorts_skips_sign_and_empty_values() -> None:
    params = {"b": "2", "a": "1", "sign": "x", "sign_type": "RSA2", "empty": "", "c": "中文"}
    assert alipay_content(params) == "a=1&b=2&c=中文".encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"a=1&b=%E4%B8%AD", {"a": "1", "b": "中"}),
        (("charset=gbk&b=" + quote("中", encoding="gbk")).encode(), {"charset": "gbk", "b": "中"}),
        (b"a=1&b=", {"a": "1", "b": ""}),
    ],
)
def test_alipay_form_decoding(body: bytes, expected: dict[str, str]) -> None:
    assert parse_form(body) == expected


@pytest.mark.parametrize("body", [b"a=1&a=2", "a=中".encode(), b"charset=nonesuch&a=1", b"a=%FF"])
def test_alipay_form_refusals(body: bytes) -> None:
    with pytest.raises(CallbackRejected):
        parse_form(body)


def test_sandbox_notification_round_trips_through_wechat_verification() -> None:
    now = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    headers, body = SANDBOX.notification(order_id="SD1", transaction_id="T1", total_fen=1234, now=now)
    note = verify_wechat(SANDBOX.config(timedelta(minutes=5)), headers, body, now + timedelta(seconds=299))
    assert isinstance(note, Notification)
    assert (note.order_id, note.provider_txn_id, note.amount, note.paid) == ("SD1", "T1", Decimal("12.34"), True)
    with pytest.raises(CallbackRejected, match="outside"):
        verify_wechat(SANDBOX.config(timedelta(minutes=5)), headers, body, now + timedelta(seconds=301))
    other = Sandbox(SANDBOX.private_key, b"fedcba9876543210fedcba9876543210")
    with pytest.raises(CallbackRejected, match="decrypt"):
        verify_wechat(other.config(timedelta(minutes=5)), headers, body, now)


@pytest.mark.parametrize(
    ("month", "start", "end"),
    [
        ("2026-11", datetime(2026, 10, 31, 16, tzinfo=UTC), datetime(2026, 11, 30, 16, tzinfo=UTC)),
        ("2026-12", datetime(2026, 11, 30, 16, tzinfo=UTC), datetime(2026, 12, 31, 16, tzinfo=UTC)),
        ("2028-02", datetime(2028, 1, 31, 16, tzinfo=UTC), datetime(2028, 2, 29, 16, tzinfo=UTC)),
    ],
)
def test_statement_periods_are_local_months(month: str, start: datetime, end: datetime) -> None:
    period = Period.of(month, SHANGHAI)
    assert (period.start, period.end) == (start, end)


@pytest.mark.parametrize(
    ("kind", "counter", "section"),
    [
        ("topup", "clearing:wechat", "payments"),
        ("refund", "cash:counter", "refunds"),
        ("consumption", "revenue:water", "charges"),
        ("fixed_fee", "revenue:fees", "fees"),
        ("consumption", "revenue:fees", "fees"),
        ("shared_area", "revenue:electricity", "fees"),
        ("subsidy_credit", "subsidy:fund", "subsidies"),
        ("reversal", "revenue:electricity", "corrections"),
        ("something_new", "suspense:x", "other"),
    ],
)
def test_statement_sections(kind: str, counter: str, section: str) -> None:
    assert section_of(kind, counter) == section


@pytest.mark.parametrize(
    "fields",
    [
        {"wechat_app_id": "wx1", "wechat_platform_public_key": "not a key"},
        {
            "wechat_app_id": "wx1",
            "wechat_platform_public_key": public_pem(SANDBOX.private_key.public_key()),
            "wechat_apiv3_key": SecretStr("too-short"),
        },
        {"alipay_app_id": "2021", "alipay_public_key": "bm90IGEga2V5"},
    ],
)
def test_unusable_provider_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"BILLING_WECHAT_APIV3_KEY|not a usable public key"):
        Providers.from_settings(BillingSettings(environment="dev", **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("environment", "flag", "enabled"),
    [("dev", None, True), ("test", None, True), ("prod", None, False), ("prod", True, True), ("dev", False, False)],
)
def test_the_sandbox_is_off_in_prod_unless_asked_for(environment: str, flag: bool | None, enabled: bool) -> None:
    secrets = {"sandbox_apiv3_key": SecretStr("0123456789abcdef0123456789abcdef")}
    settings = BillingSettings(environment=environment, sandbox_payments=flag, **secrets)  # type: ignore[arg-type]
    assert (Providers.from_settings(settings).sandbox is not None) is enabled


def _certificate(key: rsa.RSAPrivateKey, serial: int) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2031, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("signer", "serial", "accepted"),
    [("old", "A1", True), ("new", "B2", True), ("new", "A1", False), ("old", "B2", False), ("new", "C3", False)],
)
def test_platform_certificate_rotation_accepts_both_certificates_by_serial(
    signer: str, serial: str, accepted: bool
) -> None:
    old, new = new_private_key(), new_private_key()
    apiv3 = "0123456789abcdef0123456789abcdef"
    settings = BillingSettings(
        environment="test",
        wechat_app_id="wx1",
        wechat_mch_id="19001",
        wechat_apiv3_key=SecretStr(apiv3),
        wechat_platform_public_key=_certificate(old, 0xA1) + _certificate(new, 0xB2),
        wechat_platform_serial="B2",
    )
    config = Providers.from_settings(settings).wechat
    assert config is not None
    platform = WechatPayEmulator(
        "wx1", "19001", new.public_key(), "M1", apiv3_key=apiv3, platform_key=old if signer == "old" else new
    )
    platform.platform_serial = serial
    platform.orders["SD1"] = WechatOrder("SD1", "wx1", "19001", 100, "NATIVE", "")
    headers, body = platform.pay("SD1")
    if accepted:
        assert verify_wechat(config, headers, body, datetime.now(UTC)).order_id == "SD1"
    else:
        with pytest.raises(CallbackRejected) as refused:
            verify_wechat(config, headers, body, datetime.now(UTC))
        assert refused.value.code == "callback_bad_signature"
