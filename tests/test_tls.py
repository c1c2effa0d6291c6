"""wss:// end to end with a certificate made for the test."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from smartsocket import Client, SmartSocket
from smartsocket.testing import running


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(keyfile), "-out", str(certfile)],
        check=True, capture_output=True, timeout=60,
    )
    return certfile, keyfile


async def test_wss_round_trip_with_verified_certificate(cert: tuple[Path, Path]) -> None:
    certfile, keyfile = cert
    server = SmartSocket(
        enable_encryption=True, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)
    )
    server.on("echo", lambda socket, data: data)
    async with running(server):
        assert server.url.startswith("wss://")
        context = ssl.create_default_context(cafile=str(certfile))
        client = Client(server.url, ssl=context, reconnect=False)
        await client.connect()
        assert await client.call("echo", "secret") == "secret"
        await client.close()


async def test_client_rejects_an_unknown_certificate_by_default(cert: tuple[Path, Path]) -> None:
    certfile, keyfile = cert
    server = SmartSocket(
        enable_encryption=True, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile)
    )
    async with running(server):
        with pytest.raises(ssl.SSLCertVerificationError):
            await Client(server.url, reconnect=False).connect()
