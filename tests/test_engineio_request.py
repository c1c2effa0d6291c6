"""Engine.IO request checks (method and query), as the reference server answers them."""

from __future__ import annotations

import pytest

from smartsocket.protocol.socketio.errors import EngineErrorCode
from smartsocket.protocol.socketio.request import EngineRequest, RequestRefused, check_request


def test_accepted_requests() -> None:
    q = {"EIO": "4", "transport": "polling"}
    assert check_request("GET", q) == EngineRequest(4, "polling", None, "GET")
    assert check_request("POST", {**q, "sid": "s"}) == EngineRequest(4, "polling", "s", "POST")
    ws = {"EIO": "3", "transport": "websocket", "sid": "s"}
    assert check_request("GET", ws) == EngineRequest(3, "websocket", "s", "GET")
    assert check_request("GET", {**q, "sid": ""}).sid is None


@pytest.mark.parametrize(
    ("method", "query", "code"),
    [
        ("GET", {"transport": "polling"}, EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION),
        ("GET", {"EIO": "5", "transport": "polling"}, EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION),
        ("GET", {"EIO": "4"}, EngineErrorCode.UNKNOWN_TRANSPORT),
        ("GET", {"EIO": "4", "transport": "flashsocket"}, EngineErrorCode.UNKNOWN_TRANSPORT),
        ("GET", {"EIO": "4", "transport": "polling", "j": "0"}, EngineErrorCode.BAD_REQUEST),
        ("POST", {"EIO": "4", "transport": "polling"}, EngineErrorCode.BAD_HANDSHAKE_METHOD),
        ("POST", {"EIO": "4", "transport": "websocket"}, EngineErrorCode.BAD_REQUEST),
        ("PUT", {"EIO": "4", "transport": "polling", "sid": "s"}, EngineErrorCode.BAD_REQUEST),
    ],
)
def test_refused_requests(method: str, query: dict[str, str], code: EngineErrorCode) -> None:
    with pytest.raises(RequestRefused) as info:
        check_request(method, query)
    assert info.value.code == code
    assert info.value.status == 400


def test_options_restrict_versions_and_transports() -> None:
    with pytest.raises(RequestRefused):
        check_request("GET", {"EIO": "3", "transport": "polling"}, allow_eio3=False)
    with pytest.raises(RequestRefused):
        check_request("GET", {"EIO": "4", "transport": "polling"}, transports=("websocket",))
