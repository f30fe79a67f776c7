"""TLS for a server kanoa-local starts: vLLM's own ``--ssl-certfile``/``--ssl-keyfile`` (uvicorn
serves HTTPS itself, no proxy on the request path), and the client side that trusts exactly
that certificate.

The files are the user's (a certificate, a chain, and its private key, PEM). A process reads
them where they are; a container gets a copy (the key 0400) unpacked before it starts, beside
the key guard, so a remote Docker host needs no file of this machine. Readiness, `status` and
the handed clients verify the server against the system's CAs and the certificate itself (a
self-signed one works), and the URL's host must be a name the certificate carries.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import UsageError, cause_chain
from ..hardware import Model

#: where a container finds them (beside the guard's folder)
CONTAINER_DIR = "/opt/kanoa-local/tls"
CERT, KEY = "cert.pem", "key.pem"


class TlsFiles(Model):
    certfile: str
    keyfile: str


def check(certfile: str | None, keyfile: str | None) -> TlsFiles | None:
    """Both or neither; readable PEM files whose key is the certificate's (checked here, before
    anything starts, as the server would load them)."""
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise UsageError("TLS needs both --ssl-certfile and --ssl-keyfile", remedy="give the certificate and its key")
    cert, key = Path(certfile).expanduser().resolve(), Path(keyfile).expanduser().resolve()
    for p in (cert, key):
        if not p.is_file():
            raise UsageError(f"no file {p}", remedy="give the path of a PEM file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise UsageError(f"{cert.name} and {key.name} cannot serve TLS ({exc.reason or exc})",
                         remedy="give a PEM certificate and the private key it was issued for "
                                "(an unencrypted key: the server starts unattended)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {exc.filename}: {exc.strerror}", remedy="check the file's permissions") from None
    return TlsFiles(certfile=str(cert), keyfile=str(key))


def args(files: TlsFiles, in_container: bool) -> list[str]:
    """vLLM's flags: the container's copies, or the files themselves for a process."""
    if in_container:
        return ["--ssl-certfile", f"{CONTAINER_DIR}/{CERT}", "--ssl-keyfile", f"{CONTAINER_DIR}/{KEY}"]
    return ["--ssl-certfile", files.certfile, "--ssl-keyfile", files.keyfile]


def container_files(files: TlsFiles) -> dict[str, tuple[bytes, int]]:
    """Path inside the container -> (content, mode) for the tar unpacked before the start."""
    return {f"{CONTAINER_DIR}/{CERT}": (Path(files.certfile).read_bytes(), 0o444),
            f"{CONTAINER_DIR}/{KEY}": (Path(files.keyfile).read_bytes(), 0o400)}


def client_context(files: TlsFiles | None) -> ssl.SSLContext | None:
    """What a client of the server verifies it with: the system's CAs and the certificate
    itself (a self-signed certificate, or a leaf whose CA this machine lacks)."""
    if files is None:
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(files.certfile)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def verify_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate error inside a client error (urllib wraps it), if that is what it is."""
    return next((e for e in cause_chain(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)
