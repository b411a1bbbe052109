"""The media side of ``roomctl join``: an aiortc WebRTC mesh peer, bridged to the trio client.

Only ``roomctl join`` imports the modules that pull in aiortc and PyAV (``bridge`` is plain
asyncio and trio; ``settings`` is plain Python), so the other commands start fast:

- ``settings``: what the command line asked for, parsed and checked (no aiortc).
- ``bridge``: the private asyncio loop in its own thread, and the ways across to trio.
- ``ice``: ICE servers and which local addresses give host candidates (loopback switch).
- ``sources``: the video and audio sources, each opened once and relayed to every peer.
- ``peers``: the mesh, one RTCPeerConnection per remote participant.
- ``recorder``: one file per remote peer and track.
- ``stats``: per-peer counters and the stats sample.
- ``call``: the trio side: the room's WebSocket, events and stats output, leaving.
"""
