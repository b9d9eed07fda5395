"""TLS for both ports: one certificate and key, optionally a CA whose clients must present a
certificate (mutual TLS).

REST (uvicorn) and tfmux's own gRPC server take an ``ssl.SSLContext`` made here (the gRPC one
offers ALPN ``h2``, as gRPC clients require); grpc.aio takes ``grpc.ssl_server_credentials``
made from the same files. Files are read once, at startup, so a bad file stops the server with
a message naming it instead of failing the first handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HANDSHAKE_TIMEOUT_SECONDS = 10.0  # a connection that has not finished its handshake is closed


class TlsError(OSError):
    """A certificate, key or CA file that cannot be used; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of the server's TLS identity, and the CA of its clients (mTLS) if any."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    @classmethod
    def of(cls, cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsFiles | None:
        """The files of a configuration, or None when TLS is off (no certificate)."""
        if cert is None and key is None and client_ca is None:
            return None
        if cert is None or key is None:
            raise TlsError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
        return cls(cert, key, client_ca)

    @property
    def mutual(self) -> bool:
        """True when clients must present a certificate signed by ``client_ca``."""
        return self.client_ca is not None

    def context(self, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A server context: TLS 1.2 or later, the certificate chain, client verification when
        a client CA is set, and ``alpn`` offered in that order."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(
                f"cannot use TLS certificate {self.cert} with key {self.key}: {exc}"
            ) from None
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"cannot use TLS client CA {self.client_ca}: {exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context

    def grpc_credentials(self) -> Any:
        """``grpc.ServerCredentials`` for grpc.aio from the same files (read and checked)."""
        import grpc

        self.context()  # the same checks and messages as the other servers
        chain = self.cert.read_bytes()
        key = self.key.read_bytes()
        roots = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=roots, require_client_auth=roots is not None
        )
