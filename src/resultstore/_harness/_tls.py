"""Throw-away TLS material (trustme) for test servers."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

__all__ = ["TLSFiles"]


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """PEM files of a throw-away CA, a server certificate and a client certificate.

    The server certificate is valid for ``127.0.0.1`` and ``localhost``; the client
    certificate is signed by the same CA, for mutual TLS. ``other_ca_cert`` is a second,
    unrelated CA: a client that trusts only it must fail to verify the server.

    Attributes:
        ca_cert: the CA certificate clients trust.
        server_cert: the server certificate (chain), signed by the CA.
        server_key: the server certificate's private key.
        client_cert: a client certificate signed by the CA.
        client_key: the client certificate's private key.
        other_ca_cert: an unrelated CA certificate (the "wrong CA").
    """

    ca_cert: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_cert: str

    @classmethod
    def generate(cls, directory: str | os.PathLike[str]) -> TLSFiles:
        """Create a fresh CA, server and client certificates, and another CA, in `directory`.

        Args:
            directory: where the PEM files are written (created if missing).

        Returns:
            The paths of the files written.
        """
        import trustme  # lazy: only TLS users pay for it

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="resultstore test CA")
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("resultstore-test-client")
        other = trustme.CA(organization_name="resultstore unrelated CA")

        files = cls(
            ca_cert=str(folder / "ca.pem"),
            server_cert=str(folder / "server.pem"),
            server_key=str(folder / "server.key"),
            client_cert=str(folder / "client.pem"),
            client_key=str(folder / "client.key"),
            other_ca_cert=str(folder / "other-ca.pem"),
        )
        ca.cert_pem.write_to_path(files.ca_cert)
        other.cert_pem.write_to_path(files.other_ca_cert)
        for cert, cert_path, key_path in (
            (server, files.server_cert, files.server_key),
            (client, files.client_cert, files.client_key),
        ):
            Path(cert_path).write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
            cert.private_key_pem.write_to_path(key_path)
        return files
