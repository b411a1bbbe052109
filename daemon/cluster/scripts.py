"""The cluster's Lua scripts: each atomic step of ownership and of the log is one script.

Redis runs a script alone, so each step below is all or nothing. Every write to a room
first checks that the caller still holds the room's lease with the epoch it claimed
(``owner`` is ``"<node> <epoch>"``): a node that was paused past its lease and woke up
(SIGSTOP, a long GC, a partition) is *fenced*, and writes nothing, even if its clients
still talk to it. Errors are Redis error replies whose first word says what happened:
``FENCED`` (not the owner), ``SEQ <last>`` (the seq is not the one after the last
committed one, which follows). Centrifugo's history script is the model of ``APPEND``.
All keys of one script share the room's hash tag (``daemon.cluster.keys``).
"""

from __future__ import annotations

CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then return {0, current} end
local epoch = redis.call('INCR', KEYS[2])
local owner = ARGV[1] .. ' ' .. epoch
redis.call('SET', KEYS[1], owner, 'PX', ARGV[2])
return {1, owner}
"""
"""KEYS lease, epoch; ARGV node, ttl_ms -> {1, owner} when claimed, {0, holder} otherwise."""

RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
"""KEYS lease; ARGV owner, ttl_ms -> 1 when still held (and extended), 0 when lost."""

RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""
"""KEYS lease; ARGV owner -> 1 when it was held and is now free."""

_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED this node no longer owns the room')
end
"""

APPEND = _FENCE + """
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local seq = tonumber(ARGV[2])
if seq ~= last + 1 then return redis.error_reply('SEQ ' .. last) end
redis.call('SET', KEYS[2], seq)
redis.call('XADD', KEYS[3], seq .. '-0', 'at', ARGV[3], 'body', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[5], seq .. ' ' .. ARGV[3]) end
redis.call('PUBLISH', KEYS[4], ARGV[2])
return seq
"""
"""KEYS lease, seq, log, events, keys; ARGV owner, seq, at, body, key ('' for none) -> seq.

The next seq is the last committed one plus one, or the append is refused: seqs have no
gap and no duplicate whatever fails around them."""

PUT_ROOM = _FENCE + """
redis.call('HSET', KEYS[2], 'app', ARGV[2], 'created_at', ARGV[3], 'meta', ARGV[4],
           'private', ARGV[5], 'implicit', ARGV[6])
return 1
"""
"""KEYS lease, room; ARGV owner, app, created_at, meta, private, implicit."""

DELETE_ROOM = _FENCE + """
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"""
"""KEYS lease, then the room's data keys; the lease stays for its owner to release."""

PUT_SESSION = _FENCE + """
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
"""KEYS lease, sessions; ARGV owner, session id, record."""

DROP_SESSION = _FENCE + """
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""
"""KEYS lease, sessions; ARGV owner, session id."""
