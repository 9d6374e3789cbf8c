"""The providers' signature and encryption schemes, as pure functions (no I/O).

WeChat Pay API v3: the platform signs ``"{timestamp}\\n{nonce}\\n{body}\\n"`` with RSA-SHA256
(PKCS#1 v1.5) and sends it base64 in ``Wechatpay-Signature``; the payment itself travels in
``resource``, encrypted with AEAD_AES_256_GCM under the merchant's 32-byte APIv3 key (the
12-byte nonce and the associated data are sent beside the ciphertext, the 16-byte tag is
appended to it). Our own requests to WeChat Pay carry ``Authorization: WECHATPAY2-SHA256-RSA2048``
with a signature over ``"{METHOD}\\n{path?query}\\n{timestamp}\\n{nonce}\\n{body}\\n"`` by the merchant key;
the JSAPI front end gets ``paySign`` over ``"{appId}\\n{timeStamp}\\n{nonceStr}\\n{package}\\n"``.
Alipay: RSA2 = SHA256withRSA over the parameters except ``sign`` and ``sign_type``, sorted by name
and joined as ``k=v&k=v`` (empty values left out); its API answers sign the raw JSON text of the
``<method>_response`` member exactly as sent. The `sign_*`
and `encrypt_*` halves exist for the sandbox provider and the tests.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class SignatureError(ValueError):
    """A signature, key or ciphertext did not check out."""


def load_public_key(text: str) -> rsa.RSAPublicKey:
    """An RSA public key from a PEM key, a PEM certificate, or bare base64 DER (as Alipay shows it)."""
    text = text.strip()
    key: object
    try:
        if "BEGIN CERTIFICATE" in text:
            key = x509.load_pem_x509_certificate(text.encode()).public_key()
        elif "BEGIN" in text:
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as err:
        raise SignatureError(f"not a usable public key: {err}") from err
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the provider's key must be an RSA key")
    return key


def load_platform_keys(text: str, serial: str) -> dict[str, rsa.RSAPublicKey]:
    """WeChat Pay platform keys by serial, from one or more PEM certificates (each names its own serial, the
    certificate serial number in upper-case hex) or a PEM public key (whose id is `serial`)."""
    blocks = [f"-----BEGIN{block}" for block in text.split("-----BEGIN")[1:]] or [text]
    keys: dict[str, rsa.RSAPublicKey] = {}
    for block in blocks:
        key = load_public_key(block)
        if "BEGIN CERTIFICATE" in block:
            keys[format(x509.load_pem_x509_certificate(block.strip().encode()).serial_number, "X")] = key
        else:
            keys[serial] = key
    return keys


def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SignatureError("the signing key must be an RSA key")
    return key


def new_private_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit key (the size both providers use)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def rsa_sha256_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_sha256_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> None:
    """Raise SignatureError unless `signature` (base64) is `key`'s PKCS#1 v1.5 SHA-256 signature of `message`."""
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError) as err:
        raise SignatureError("signature does not verify") from err


def wechat_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes WeChat Pay v3 signs for a notification or response."""
    return timestamp.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"


def wechat_request_message(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The exact bytes a merchant signs for a WeChat Pay v3 API request (`path` with its query string)."""
    return f"{method}\n{path}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def wechat_authorization(mch_id: str, serial: str, nonce: str, timestamp: str, signature: str) -> str:
    """The `Authorization` header of a WeChat Pay v3 API request."""
    return (
        f'WECHATPAY2-SHA256-RSA2048 mchid="{mch_id}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial}"'
    )


def parse_wechat_authorization(header: str) -> dict[str, str]:
    """The fields of a WeChat Pay v3 `Authorization` header (for the provider's side: emulators, tests)."""
    scheme, _, rest = header.partition(" ")
    if scheme != "WECHATPAY2-SHA256-RSA2048":
        raise SignatureError(f"unknown authorization scheme {scheme!r}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value.strip('"')
    return fields


def jsapi_pay_message(app_id: str, timestamp: str, nonce: str, package: str) -> bytes:
    """What the merchant signs for the JSAPI front end (`wx.requestPayment` / `WeixinJSBridge`)."""
    return f"{app_id}\n{timestamp}\n{nonce}\n{package}\n".encode()


def aes_gcm_decrypt(key: bytes, nonce: str, associated_data: str, ciphertext_b64: str) -> bytes:
    """AEAD_AES_256_GCM: `ciphertext_b64` is base64(ciphertext ‖ 16-byte tag)."""
    if len(key) != 32:
        raise SignatureError("the APIv3 key must be 32 bytes")
    try:
        return AESGCM(key).decrypt(
            nonce.encode(), base64.b64decode(ciphertext_b64, validate=True), associated_data.encode()
        )
    except (InvalidTag, binascii.Error, ValueError) as err:
        raise SignatureError("resource does not decrypt (wrong key, nonce, associated data or tampered)") from err


def aes_gcm_encrypt(key: bytes, nonce: str, associated_data: str, plaintext: bytes) -> str:
    return base64.b64encode(AESGCM(key).encrypt(nonce.encode(), plaintext, associated_data.encode())).decode()


def alipay_content(params: Mapping[str, str]) -> bytes:
    """The string Alipay signs: every parameter but sign/sign_type with a value, sorted, as k=v&k=v."""
    items = sorted((k, v) for k, v in params.items() if k not in ("sign", "sign_type") and v != "")
    return "&".join(f"{k}={v}" for k, v in items).encode()


def alipay_response_content(raw: str, method: str) -> tuple[bytes, str]:
    """The signed part of an Alipay API answer — the `<method with _>_response` member's raw JSON text,
    byte for byte as it was sent — and the signature beside it."""
    name = '"' + method.replace(".", "_") + '_response"'
    start = raw.find(name)
    if start < 0:
        raise SignatureError(f"answer has no {name} member")
    colon = raw.index(":", start + len(name))
    begin = colon + 1
    while raw[begin] in " \t\r\n":
        begin += 1
    try:
        _, end = json.JSONDecoder().raw_decode(raw, begin)
        sign = json.loads(raw).get("sign", "")
    except ValueError as err:
        raise SignatureError("answer is not JSON") from err
    return raw[begin:end].encode(), str(sign)
