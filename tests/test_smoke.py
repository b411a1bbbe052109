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


async def test_leave_ends_the_session_at_once_with_a_normal_close(connect: Any) -> None:
    import trio_websocket

    async with connect("bye") as alice, connect("bye") as bob:
        await alice.hello("alice")
        await bob.hello("bob")
        assert (await bob.request({"type": "leave"}))["type"] == "ok"
        left = await alice.recv_type("participant-left")
        assert left == {"type": "participant-left", "participant_id": bob.session_id,
                        "reason": "left"}
        try:
            await bob.recv()
            raise AssertionError("the connection stayed open after leave")
        except trio_websocket.ConnectionClosed as closed:
            assert closed.reason.code == 1000
