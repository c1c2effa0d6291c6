from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from smartsocket import AckError, SmartSocket
from smartsocket.testing import Recorder, connected, running


async def get(server: SmartSocket, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.get_running_loop().run_in_executor(None, fetch)


async def test_only_the_demo_app_serves_the_chat_page(demo: SmartSocket) -> None:
    status, page = await get(demo, "/")
    assert status == 200 and "SmartSocket chat" in page and "/smartsocket/client.js" in page

    # the user's own app (--app, the README's "Your first server"): its events are not the chat's
    async with running(SmartSocket(port=0)) as app:
        status, page = await get(app, "/")
        assert status == 200 and "SmartSocket chat" not in page
        assert "SmartSocket server" in page and app.url in page
        for link in ("/smartsocket/dashboard", "/smartsocket/client.js", "docs/protocol.md"):
            assert link in page
        assert (await get(app, "/smartsocket/index.html"))[0] == 404


async def test_echo_join_chat(demo: SmartSocket) -> None:
    async with connected(demo) as a, connected(demo) as b:
        assert await a.call("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        assert await a.call("join", {"room": "r"}) == {"room": "r", "members": 1}
        assert await b.call("join", {"room": "r"}) == {"room": "r", "members": 2}
        chats = Recorder(b, "chat")
        assert await a.call("chat", {"room": "r", "text": "hi"}) == {"delivered": 1}
        msg = await chats.next("chat")
        assert msg["text"] == "hi" and msg["from"] == a.sid and msg["room"] == "r"
        assert isinstance(msg["timestamp"], int)
        assert await b.call("leave", {"room": "r"}) == {"room": "r"}
        assert await a.call("chat", {"room": "r", "text": "alone"}) == {"delivered": 0}


async def test_chat_outside_room_is_refused(demo: SmartSocket) -> None:
    async with connected(demo) as a:
        try:
            await a.call("chat", {"room": "nope", "text": "hi"})
        except AckError as exc:
            assert exc.code == "not_in_room"
        else:
            raise AssertionError("expected not_in_room")


async def test_presence_members_and_typing(demo: SmartSocket) -> None:
    async with connected(demo) as a, connected(demo) as b:
        presence = Recorder(a, "presence")
        typing = Recorder(a, "typing")
        await a.call("join", {"room": "r", "name": "Ann"})
        await b.call("join", {"room": "r", "name": "  Bob  "})
        assert await presence.next("presence") == {
            "room": "r", "id": b.sid, "name": "Bob", "joined": True
        }
        members = await a.call("members", {"room": "r"})
        assert sorted(m["name"] for m in members["members"]) == ["Ann", "Bob"]
        assert await b.call("typing", {"room": "r", "typing": True}) == {"delivered": 1}
        assert await typing.next("typing") == {
            "room": "r", "from": b.sid, "name": "Bob", "typing": True
        }
        await b.call("leave", {"room": "r"})
        assert (await presence.next("presence"))["joined"] is False
        try:
            await b.call("members", {"room": "r"})
        except AckError as exc:
            assert exc.code == "not_in_room"
        else:
            raise AssertionError("expected not_in_room")
        await b.call("join", {"room": "r"})
        assert (await presence.next("presence"))["joined"] is True
    # b disconnected while in the room: a was told (a closed too, so nothing more to check)
