"""TLS for ``keel serve``: server certificate, optional client certificates (mTLS), and the
client certificate handed to the app.

uvicorn verifies client certificates against ``--tls-client-ca`` but does not pass them to the
application; ``client_cert_protocol()`` is uvicorn's HTTP protocol with one addition: on a TLS
connection with a verified client certificate, every request's ASGI scope carries it as
``scope["extensions"]["tls"]["client_cert"]`` (``ssl.getpeercert()`` form), where
``keel.server.agents`` binds it to the token's agent.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

__all__ = ["ClientCertProtocol", "client_cert_protocol", "uvicorn_tls_options"]


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # httptools is optional for uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class ClientCertProtocol(_Base):
    """uvicorn's HTTP/1.1 protocol (httptools when installed, else h11) that passes the verified
    client certificate to the app. Module-level so that ``--workers N`` can pickle it."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert() if ssl_object is not None else None
        if not cert:
            return
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions["tls"] = {"client_cert": cert}
            await inner(scope, receive, send)

        self.app = app


def client_cert_protocol() -> type[asyncio.Protocol]:
    return ClientCertProtocol


def uvicorn_tls_options(
    cert: Path | None, key: Path | None, client_ca: Path | None, *, require_client_cert: bool
) -> dict[str, Any]:
    """The uvicorn settings for these TLS files ({} without a certificate)."""
    if cert is None:
        if key is not None or client_ca is not None:
            from keel.errors import UsageError

            raise UsageError("--tls-key and --tls-client-ca need --tls-cert")
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(cert), "ssl_keyfile": str(key) if key else None}
    if client_ca is not None:
        options["ssl_ca_certs"] = str(client_ca)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        options["http"] = client_cert_protocol()
    return options
