"""Server-side TLS of one Port: the default certificate, per-host certificates picked by SNI, client certificates.

Every context of a port is built the same way (client-certificate settings
included), because SNI swaps the context of a handshake in flight and the
new one's verification then applies. A renewal loads the new chain into the
live context, so the listening socket and the established connections stay
as they are; each certificate is renewed on its own when its files change.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..common.build_counts import count
from ..policies.base import ClientCertificate

log = structlog.get_logger("wsgate.tls")


@dataclass(slots=True)
class _Certificate:
    where: str  # the config location, as in Config.file_fingerprints: "Port/p/tls" or "Port/p/tls.sni[0]"
    cert: Path
    key: Path
    context: ssl.SSLContext


class CertificatePairError(ValueError):
    """One certificate/key pair of a listener cannot be loaded; ``at`` is its place in the Port (("tls",) or
    ("tls", "sni", i)) so the diagnostic points at that pair, not the default certificate."""

    def __init__(self, at: tuple[str | int, ...], what: str, cause: BaseException) -> None:
        super().__init__(f"{what}: {str(cause).strip() or type(cause).__name__}")
        self.at = at
        self.what = what


class ServerTLS:
    """The TLS contexts one listener serves; ``context`` is the one the server socket gets."""

    def __init__(self, name: str, loaded: Any) -> None:
        count("server_tls")
        tls = loaded.model.tls
        self.name = name
        self._client = tls.client_certificates
        self._ca = loaded.resolve(self._client.ca_file) if self._client is not None else None
        self.certificates: list[_Certificate] = []
        self.by_host: dict[str, ssl.SSLContext] = {}
        self.context = self._pair(("tls",), "the default certificate", f"Port/{name}/tls", loaded, tls)
        for i, sni in enumerate(tls.sni):
            what = f"SNI certificate {i + 1} ({', '.join(sni.hosts)})"
            context = self._pair(("tls", "sni", i), what, f"Port/{name}/tls.sni[{i}]", loaded, sni)
            for host in sni.hosts:
                self.by_host.setdefault(host, context)
        if self.by_host:
            self.context.sni_callback = self._pick

    def _pair(self, at: tuple[str | int, ...], what: str, where: str, loaded: Any, files: Any) -> ssl.SSLContext:
        try:
            return self._add(where, loaded.resolve(files.cert), loaded.resolve(files.key))
        except (ssl.SSLError, OSError) as exc:
            raise CertificatePairError(at, f"{what}: cert {files.cert} with key {files.key}", exc) from exc

    def _add(self, where: str, cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if self._client is not None:
            context.load_verify_locations(cafile=str(self._ca))
            context.verify_mode = ssl.CERT_REQUIRED if self._client.mode == "required" else ssl.CERT_OPTIONAL
        self.certificates.append(_Certificate(where, cert, key, context))
        return context

    def _pick(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        """SNI: hand the handshake to the context of the host asked for (exact name, then ``*.`` pattern)."""
        if not server_name:
            return
        name = server_name.lower().rstrip(".")
        context = self.by_host.get(name)
        if context is None and "." in name:
            context = self.by_host.get("*." + name.split(".", 1)[1])
        if context is not None:
            sslobj.context = context

    def renew(self, before: dict[str, str], after: dict[str, str]) -> list[str]:
        """Reload each certificate whose files' fingerprints changed; problems as text (the old one keeps serving)."""
        problems: list[str] = []
        for entry in self.certificates:
            files = (f"{entry.where}.cert", f"{entry.where}.key")
            if all(before.get(f) == after.get(f) for f in files):
                continue
            try:
                # Try a scratch context first: a failed load into the live one could leave it half-updated.
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(entry.cert, entry.key)
                entry.context.load_cert_chain(entry.cert, entry.key)
            except (OSError, ssl.SSLError) as exc:
                log.error("certificate_renewal_failed", kept="the previous certificate", name=self.name,
                          certificate=entry.where, error=str(exc))
                problems.append(f"port {self.name}: certificate renewal failed ({entry.where}): {exc}")
                continue
            log.info("certificate_renewed", name=self.name, certificate=entry.where)
        return problems


def client_certificate(transport: Any) -> ClientCertificate | None:
    """The verified client certificate of a TLS connection (None without one, or on a plain connection).

    The TLS layer has verified it against the port's CA bundle already: with
    ``mode: optional`` a certificate that fails verification fails the handshake.
    """
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    der = sslobj.getpeercert(binary_form=True)
    if not der:
        return None
    info = sslobj.getpeercert() or {}
    subject = next((value for rdn in info.get("subject", ()) for key, value in rdn if key == "commonName"), None)
    sans = tuple(str(value).lower() for _, value in info.get("subjectAltName", ()))
    return ClientCertificate(subject, sans, hashlib.sha256(der).hexdigest())
