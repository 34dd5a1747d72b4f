"""The coordinator's site-facing endpoint: TLS in front of the SuperLink that forwards the Fleet API and nothing else.

Flower 1.41 serves the Fleet API (sites), the Control API (`flwr run`, `flwr
supernode register`, with no authentication in the open-source build) and the
Runtime API (the ServerApp) from one HTTPS port. The coordinator therefore binds
the SuperLink to loopback and puts this gateway on the address the sites are
given: a request is forwarded only when it is a POST to one of the Fleet API's
own routes (read from Flower's router, so the list follows Flower); every other
path or method is answered 403 here and never reaches Flower. Fleet calls still
carry the node's signature, which the SuperLink checks against the enrolled keys.

Built on maintained parts: Starlette for the routing, uvicorn for TLS and HTTP,
httpx (verifying the coordinator's CA) for the hop to the SuperLink.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

REFUSED = "only the Fleet API is served on this address"
MAX_BODY_BYTES = 256 * 1024 * 1024  # far above one model's arrays; bounds what one caller can make us buffer
UPSTREAM_TIMEOUT_S = 120.0
# hop-by-hop headers (RFC 9110 7.6.1) and those the HTTP layers recompute
_DROP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                   "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"})


@lru_cache(maxsize=1)
def fleet_paths() -> frozenset[str]:
    """The Fleet API's routes, as Flower's own router declares them."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(route.path for route in router.routes)


def _headers(items) -> list[tuple[str, str]]:
    return [(k, v) for k, v in items if k.lower() not in _DROP]


class _TooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(upstream: str, ca_certificate: str, *, max_body: int = MAX_BODY_BYTES) -> Starlette:
    """The gateway's ASGI app, forwarding allowed calls to `upstream` (https://127.0.0.1:PORT)."""
    allowed = fleet_paths()
    client = httpx.AsyncClient(base_url=upstream, verify=ca_certificate, timeout=UPSTREAM_TIMEOUT_S)

    async def forward(request: Request) -> Response:
        if request.method != "POST" or request.url.path not in allowed:
            log.warning("refused %s %s from %s", request.method, request.url.path,
                        request.client.host if request.client else "?")
            return PlainTextResponse(REFUSED, status_code=403)
        try:
            body = await _body(request, max_body)
        except _TooLarge:
            return PlainTextResponse("request body too large", status_code=413)
        try:
            upstream_response = await client.post(request.url.path, content=body, headers=_headers(request.headers.items()))
        except httpx.HTTPError as exc:
            log.error("the SuperLink did not answer %s: %s", request.url.path, exc)
            return PlainTextResponse("the coordinator is not reachable now", status_code=502)
        return Response(upstream_response.content, status_code=upstream_response.status_code,
                        headers=dict(_headers(upstream_response.headers.items())))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve(*, host: str, port: int, upstream: str, certfile: str, keyfile: str, ca_certificate: str) -> None:
    """Serve the gateway with TLS until stopped (SIGTERM)."""
    import uvicorn

    uvicorn.run(create_app(upstream, ca_certificate), host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                log_level="warning", access_log=False, server_header=False, proxy_headers=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m semiofed.server.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="https://127.0.0.1:PORT of the SuperLink")
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--ca-certificate", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    serve(host=args.host, port=args.port, upstream=args.upstream, certfile=args.certfile, keyfile=args.keyfile,
          ca_certificate=args.ca_certificate)


if __name__ == "__main__":
    main()
