"""The SDK's cluster transport over HTTPS: it trusts the server only through the service account's CA
(the test certificate is made with openssl).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from hpo_trial.reporting import Reporter, RetryPolicy
from tests.support.fake_kube_api import (
    FakeApi,
    cluster_reporter,
    make_sa_dir,
    serve,
)


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    return make_sa_dir(tmp_path)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a test certificate")
def test_https_verifies_the_server_with_the_service_account_ca(api: FakeApi, sa_dir: Path) -> None:
    key, cert = sa_dir / "server.key", sa_dir / "ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, url = serve(api, context)
    try:
        assert cluster_reporter(url, sa_dir).report(1, 0.5)
        assert [r["seq"] for r in api.reports] == [0]
        cert.unlink()  # without the cluster CA the server is not trusted
        untrusted = Reporter(cluster_reporter(url, sa_dir).transport, RetryPolicy(total_seconds=0.2))
        assert untrusted.report(2, 0.5) is False
        assert len(api.reports) == 1
    finally:
        server.shutdown()
        server.server_close()
