"""TLS inputs, checked before anything starts, and what goes into a container."""

from __future__ import annotations

import io
import ssl
import tarfile

import pytest

from kanoa_local.engine import guard, tls
from kanoa_local.errors import UsageError
from tests.conftest import run_cli, tls_pair


def test_both_files_or_neither_and_the_key_must_be_the_certificates(tmp_path):
    cert, key = tls_pair(tmp_path / "a")
    other_cert, other_key = tls_pair(tmp_path / "b")
    assert tls.check(None, None) is None
    files = tls.check(str(cert), str(key))
    assert files is not None and files.certfile == str(cert.resolve())
    for c, k, word in ((str(cert), None, "both"), (str(cert), str(other_key), "cannot serve TLS"),
                       (str(tmp_path / "nope.pem"), str(key), "no file"), (str(key), str(key), "cannot serve TLS")):
        with pytest.raises(UsageError, match=word):
            tls.check(c, k)
    r = run_cli("up", "--cpu", "--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key))
    assert r.returncode == 2 and "cannot serve TLS" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("up", "--cpu", "--target", "slurm", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    assert r.returncode == 2 and "Slurm or Kubernetes" in r.stderr


def test_the_container_gets_the_guard_and_the_files_the_key_0400(tmp_path):
    cert, key = tls_pair(tmp_path)
    files = tls.check(str(cert), str(key))
    assert files is not None
    blob = guard.tar_archive(guard.CONTAINER_DIR, extra=tls.container_files(files))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        modes = {m.name: m.mode for m in tar.getmembers()}
    assert modes["opt/kanoa-local/tls/key.pem"] == 0o400 and modes["opt/kanoa-local/tls/cert.pem"] == 0o444
    assert modes["opt/kanoa-local/kanoa_local_guard.py"] == 0o444 and modes["opt/kanoa-local/tls"] == 0o755
    assert tls.args(files, in_container=True) == ["--ssl-certfile", "/opt/kanoa-local/tls/cert.pem",
                                                  "--ssl-keyfile", "/opt/kanoa-local/tls/key.pem"]
    assert tls.args(files, in_container=False)[1] == files.certfile


def test_the_client_trusts_the_certificate_itself(tmp_path):
    assert tls.client_context(None) is None
    cert, key = tls_pair(tmp_path)
    files = tls.check(str(cert), str(key))
    ctx = tls.client_context(files)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert any("kanoa-local-test" in str(c.get("subject")) for c in ctx.get_ca_certs())
