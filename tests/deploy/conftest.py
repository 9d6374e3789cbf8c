"""Deployment tests: the broker's users, ACL and TLS, backups, alert rules, the Kubernetes manifests and the
container stack. They need tools a plain `make test` machine may lack (Docker, promtool), so they run only
under `make test-deploy`, which sets SHUIDIAN_TEST_DEPLOY=1 and installs what they need."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from shuidian_devstack.demo import DemoEstate

    from .stack import Stack

if not os.environ.get("SHUIDIAN_TEST_DEPLOY"):
    collect_ignore_glob = ["test_*.py"]

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BACKENDS = ("collector", "billing", "control", "alarm", "insights")
SERVICES = (*BACKENDS, "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@dataclass(frozen=True)
class Tls:
    """A throwaway CA, a broker certificate for 127.0.0.1/localhost and client certificates by name."""

    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def make_tls(directory: Path, clients: tuple[str, ...] = ()) -> Tls:
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"shuidian test CA {secrets.token_hex(4)}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca, ca_key)

    def leaf(name: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName] | None) -> None:
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write(directory / name, builder.sign(ca_key, hashes.SHA256()), key)

    leaf(
        "server",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    for client in clients:
        leaf(client, ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return Tls(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key")


@dataclass(frozen=True)
class Broker:
    """The deployment's broker (deploy/mosquitto: its entry point, config and ACL) on free ports."""

    port: int
    tls_port: int
    cert_port: int
    passwords: dict[str, str]
    tls: Tls

    def url(self, user: str | None, *, tls: bool = False) -> str:
        scheme, port = ("mqtts", self.tls_port) if tls else ("mqtt", self.port)
        auth = f"{user}:{self.passwords[user]}@" if user else ""
        return f"{scheme}://{auth}127.0.0.1:{port}"


@pytest.fixture(scope="module")
def deploy_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    root = tmp_path_factory.mktemp("broker")
    config = root / "config"
    config.mkdir()
    shutil.copy(DEPLOY / "mosquitto" / "mosquitto.conf", config)
    shutil.copy(DEPLOY / "mosquitto" / "acl", config)
    tls = make_tls(config / "tls", clients=("billing", "stranger"))
    # A third listener for the mutual-TLS option (docs/deploy.md): the client certificate's common name
    # is the broker user, so the same ACL applies without any password.
    cert_port = free_port()
    with (config / "mosquitto.conf").open("a") as conf:
        conf.write(
            f"\nlistener {cert_port}\ncafile ${{CONFIG_DIR}}/tls/ca.crt\ncertfile ${{CONFIG_DIR}}/tls/server.crt\n"
            "keyfile ${CONFIG_DIR}/tls/server.key\nrequire_certificate true\nuse_identity_as_username true\n"
        )
    passwords = {user: secrets.token_urlsafe(24) for user in (*SERVICES, "integrator")}
    port, tls_port = free_port(), free_port()
    env = {
        "PATH": f"{os.environ['PATH']}:/usr/sbin",
        "CONFIG_DIR": str(config),
        "RUN_DIR": str(root / "run"),
        "DATA_DIR": str(root),
        "MQTT_PORT": str(port),
        "MQTTS_PORT": str(tls_port),
        **{f"MQTT_PASSWORD_{user.upper()}": password for user, password in passwords.items()},
    }
    log = (root / "broker.log").open("w")
    process = subprocess.Popen([str(DEPLOY / "mosquitto" / "entrypoint.sh")], env=env, stdout=log, stderr=log)
    try:
        for p in (port, tls_port, cert_port):
            wait_for_port(p)
        yield Broker(port, tls_port, cert_port, passwords, tls)
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The compose stack (tests/deploy/stack.py), up and healthy, shared by every test that needs it."""
    from .stack import running_stack

    with running_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@dataclass(frozen=True)
class Estate:
    """The simulator's demo estate, commissioned through the services (buses, meters, rooms, accounts, users)."""

    demo: DemoEstate
    backend_auth: httpx.Auth
    accounts: list[str]


@pytest.fixture(scope="session")
async def estate(stack: Stack) -> Estate:
    from shuidian_devstack.demo import DemoEstate
    from shuidian_devstack.seed import DEMO_PASSWORD, seed
    from shuidian_kit.service_auth import ServiceTokens
    from shuidian_simulator.estate import Estate as SimulatedEstate

    text = stack.run("exec", "-T", "simulator", "cat", "/data/estate.json").stdout
    demo = DemoEstate(Path("estate.json"), SimulatedEstate.model_validate_json(text))
    endpoints = {b.id: {"host": "simulator", "port": b.port} for g in demo.estate.gateways for b in g.buses}
    tokens = ServiceTokens(stack.env["SERVICE_TOKEN_SECRET"], "deploy-test")
    auth = tokens.auth({url: name for name, url in stack.backends.items()}, "service:deploy-test")
    async with httpx.AsyncClient(timeout=20, auth=auth) as internal:
        premises = demo.premises()
        urls = {**stack.backends, "gateway": stack.gateway}
        await seed(internal, urls, demo.buses(endpoints), demo.accounts(), premises=premises)
        # One staff user, the administrator the tests sign in as (a tenant user per room, as the demo has, costs
        # a password hash each: minutes on a busy 2-core host, and no test here signs in as a tenant).
        created = await internal.post(
            f"{stack.gateway}/v1/users",
            json={
                "username": "admin",
                "role": "system_admin",
                "estates": [premises.estate_id],
                "password": DEMO_PASSWORD,
            },
            headers={"Authorization": f"Bearer {stack.env['GATEWAY_STAFF_API_KEY']}"},
        )
        assert created.status_code == 201, created.text
    return Estate(demo, auth, [account.account_id for account in demo.accounts()])
