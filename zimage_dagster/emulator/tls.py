"""A throwaway certificate authority for serving the emulator over https (`--tls`).

`trustme` makes a CA and a certificate for the loopback names the emulator answers on; the
files live in a temporary folder for the life of the server. Give the CA to a client with
`verify=` (a path).

>>> with ThrowawayCA() as ca:
...     ca.ca_path.endswith("ca.pem"), open(ca.ca_path).read().startswith("-----BEGIN CERTIFICATE-----")
(True, True)
"""

from __future__ import annotations

import os
import shutil
import tempfile

from zimage_dagster.serving import Service

#: The names the emulator's certificate covers: its two origins on loopback.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "files.localhost", "::1")


class ThrowawayCA(Service):
    """A CA and one server certificate, written to a temporary folder by ``start()`` and removed
    by ``stop()`` (a ``with`` block does both)."""

    def __init__(self, names: tuple[str, ...] = LOOPBACK_NAMES) -> None:
        self._names = names
        self._dir: str | None = None
        self.ca_path = self.cert_path = self.key_path = ""

    def start(self) -> ThrowawayCA:
        try:
            import trustme  # only the TLS mode needs it
        except ImportError:  # pragma: no cover - depends on the installation
            raise RuntimeError(
                "the emulator's TLS mode needs trustme: pip install 'zimage-dagster[tls]'"
            ) from None
        self._dir = tempfile.mkdtemp(prefix="zimage-emulator-tls-")
        ca = trustme.CA(organization_name="zimage-dagster emulator (throwaway)")
        cert = ca.issue_cert(*self._names)
        self.ca_path = os.path.join(self._dir, "ca.pem")
        self.cert_path = os.path.join(self._dir, "cert.pem")
        self.key_path = os.path.join(self._dir, "key.pem")
        ca.cert_pem.write_to_path(self.ca_path)
        cert.private_key_pem.write_to_path(self.key_path)
        for i, blob in enumerate(cert.cert_chain_pems):
            blob.write_to_path(self.cert_path, append=i > 0)
        return self

    @property
    def server_files(self) -> tuple[str, str]:
        """(certfile, keyfile) for uvicorn."""
        return (self.cert_path, self.key_path)

    def stop(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
