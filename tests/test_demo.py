from __future__ import annotations

from smartsocket import AckError, SmartSocket
from smartsocket.testing import Recorder, connected


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
