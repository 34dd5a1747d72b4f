"""The coordinator's calls to its SuperLink's Control API, made in this process with Flower's own client.

`flwr supernode ls` and `flwr supernode register` are a fresh Python each (1-3 s on a busy 2-core machine, mostly
importing Flower), and `coordinator run` asked `ls` every half second while the sites started: the checks queued
behind the sites' own imports and saw a site online seconds after it was. Here the same requests (ListNodes,
RegisterNode) go over one TLS connection from Flower's ControlHttpClient, with the interceptors the `flwr` CLI
sends (client kind, runtime version). The open-source SuperLink has no account authentication on this API, so
there are no tokens to send; the API is reachable on loopback only (server/coordinator.py).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from semiofed.common.errors import SemiofedError


class ControlApiError(SemiofedError):
    """The SuperLink's Control API refused or failed a request."""


class ControlClient:
    """ListNodes and RegisterNode on the SuperLink at `address` (host:port), trusting `ca_certificate`."""

    def __init__(self, address: str, ca_certificate: Path) -> None:
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors.http.runtime_version import RuntimeVersionHttpInterceptor

        self.address = address
        self._client = ControlHttpClient.from_server_address(
            server_address=address, insecure=False, root_certificates=Path(ca_certificate).read_bytes(),
            interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")])

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return method(request)
        except Exception as exc:  # httpx's transport and status errors, a bad payload (ValueError)
            raise ControlApiError(f"the SuperLink at {self.address} did not answer {what}: {type(exc).__name__}: {exc}",
                                  "start it with `semiofed coordinator start --dir DIR` and read its log") from None

    def node_status(self) -> dict[str, str]:
        """Flower node id -> status (online, offline, registered, unregistered) of every node the SuperLink knows."""
        from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=E0611

        answer = self._call("ListNodes", self._client.ListNodes, ListNodesRequest())
        return {str(node.node_id): str(node.status) for node in answer.nodes_info}

    def register(self, public_key_file: Path, *, name: str | None = None) -> str:
        """Register a site's public key (OpenSSH, NIST EC curve) as a node; returns its node id."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from flwr.proto.control_pb2 import RegisterNodeRequest  # pylint: disable=E0611
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

        try:
            key = serialization.load_ssh_public_key(Path(public_key_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ControlApiError(f"cannot read the public key {public_key_file}: {exc}",
                                  "enroll the site's site_key.pub (OpenSSH format) again") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
            raise ControlApiError(f"the key {public_key_file} is not a NIST elliptic-curve key",
                                  "enroll the site's site_key.pub, an ECDSA P-384 key made by `semiofed site init`")
        answer = self._call("RegisterNode", self._client.RegisterNode,
                            RegisterNodeRequest(public_key=public_key_to_bytes(key), name=name))
        if not answer.node_id:
            raise ControlApiError(f"the SuperLink registered no node for {public_key_file}",
                                  "check that the key is not registered twice")
        return str(answer.node_id)
