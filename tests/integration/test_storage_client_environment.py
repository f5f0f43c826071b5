"""The storage client skips requests' per-request environment lookups only where they could
find nothing: downloads still work and still verify with the CA bundle the environment
names, and a proxy variable or a netrc file keeps requests' own handling, proxy included."""

from __future__ import annotations

import datetime
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from buildflow.environment import Environment
from buildflow.io.google import clients
from buildflow.io.google.blobs import GCSBlobReader
from tests.stack.clients import gcs_client

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No proxy variable, no netrc file (``NETRC`` names one that does not exist), and a CA
    bundle variable naming the system's bundle file; a fresh storage client per test."""
    import certifi

    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    clients._client.cache_clear()
    try:
        yield tmp_path
    finally:
        clients._client.cache_clear()


def emulator(tmp_path: Path) -> Environment:
    return Environment(name="emulator", state_dir=tmp_path)


def test_without_proxies_or_netrc_downloads_skip_the_lookups_and_keep_the_ca_bundle(
    stack_env: Any, bare_environment: Path
) -> None:
    import certifi

    bucket_name = f"env-lookups-{datetime.datetime.now().strftime('%H%M%S%f')}"
    blob = gcs_client().create_bucket(bucket_name).blob("photo.jpg")
    blob.upload_from_string(b"\xff\xd8 bytes \xff\xd9")
    env = emulator(bare_environment)
    session = clients.storage_client(env, None)._http
    assert session.trust_env is False
    assert session.verify == certifi.where()  # REQUESTS_CA_BUNDLE, applied once
    reader = GCSBlobReader(env, None, bucket_name, "photo.jpg", int(blob.generation))
    assert reader.read() == b"\xff\xd8 bytes \xff\xd9"


def test_a_netrc_file_keeps_requests_environment_handling(
    stack_env: Any, bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = bare_environment / "netrc"
    netrc.write_text("machine example.invalid login a password b\n")
    monkeypatch.setenv("NETRC", str(netrc))
    session = clients.storage_client(emulator(bare_environment), None)._http
    assert session.trust_env is True
    assert session.verify is True  # requests reads the CA bundle variable per request


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that records each request line and answers 404 (a missing object)."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).seen.append(self.requestline)
        body = b'{"error": {"code": 404, "message": "No such object"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_proxy_variable_still_routes_downloads_through_the_proxy(
    stack_env: Any, bare_environment: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    _RecordingProxy.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # a host name nothing resolves: only the proxy can answer for it
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://gcs.buildflow-test.invalid:4443")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
        env = emulator(bare_environment)
        assert clients.storage_client(env, None)._http.trust_env is True
        with pytest.raises(FileNotFoundError):
            GCSBlobReader(env, None, "b", "missing.jpg", None).read()
        assert any("http://gcs.buildflow-test.invalid:4443/" in line for line in _RecordingProxy.seen), (
            _RecordingProxy.seen
        )
    finally:
        server.shutdown()
        server.server_close()
