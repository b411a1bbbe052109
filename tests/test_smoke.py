"""Two real clients chat through a real daemon on a real port."""

from typing import Any


async def test_two_clients_chat(connect: Any) -> None:
    async with connect("demo") as alice, connect("demo") as bob:
        welcome = await alice.hello("alice")
        assert welcome["type"] == "welcome"
        await bob.hello("bob")
        joined = await alice.recv_type("participant-joined")
        assert joined["participant"]["meta"]["name"] == "bob"
        ok = await bob.request({"type": "send-message", "text": "hi"})
        assert ok["type"] == "ok" and ok["seq"] == 1
        posted = await alice.recv_type("message-posted")
        assert posted["message"]["text"] == "hi"
        assert posted["message"]["sender_id"] == bob.session_id
