"""The site-facing gateway (server/gateway.py) without processes: what it refuses before anything reaches Flower.

The upstream is an address nothing listens on, so a forwarded call would come back as 502; a refusal here is 403
or 413 and never a 502.
"""

from __future__ import annotations

from starlette.testclient import TestClient

from semiofed.server.gateway import REFUSED, create_app, fleet_paths

UNREACHABLE = "https://127.0.0.1:9"  # discard port: nothing answers


def _client(max_body: int = 1024) -> TestClient:
    return TestClient(create_app(UNREACHABLE, ca_certificate=True, max_body=max_body))  # type: ignore[arg-type]


def test_a_body_above_the_cap_is_refused_before_it_is_forwarded():
    """A caller that sends a huge body (declared, or streamed without a length) cannot make the gateway buffer it."""
    path = "/v1/fleet/push-messages"
    assert path in fleet_paths()
    with _client(max_body=1024) as client:
        declared = client.post(path, content=b"x" * 2048)
        assert declared.status_code == 413

        def chunks():
            for _ in range(8):
                yield b"y" * 512  # 4 KiB in all, no content-length: counted while it streams

        streamed = client.post(path, content=chunks())
        assert streamed.status_code == 413
        # at the cap the same call is forwarded (and fails upstream): the cap, not the route, refused the others
        assert client.post(path, content=b"z" * 1024).status_code == 502


def test_only_posts_to_the_fleet_routes_are_forwarded():
    """Every other method or path is answered here; Flower's Control and Runtime APIs are never reached."""
    with _client() as client:
        for method, path in [("GET", "/v1/fleet/pull-messages"), ("PUT", "/v1/fleet/push-messages"),
                             ("POST", "/v1/control/start-run"), ("POST", "/v1/runtime/pull-messages"),
                             ("POST", "/v1/fleet/push-messages/../../control/start-run"), ("POST", "/")]:
            answer = client.request(method, path, content=b"")
            assert answer.status_code == 403 and answer.text == REFUSED, (method, path, answer.status_code)
        assert client.post("/v1/fleet/pull-messages", content=b"").status_code == 502  # forwarded
