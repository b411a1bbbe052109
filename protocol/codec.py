"""Encoders and decoders for the two wire formats.

Build one ``Codec`` per format and direction at start-up and reuse it: msgspec's
Encoder and Decoder objects are cheap to call and expensive to build. The decoder's
type is the tagged union of every request (or event) type the endpoint knows, so apps
extend the protocol by adding their types before the codec is built.
"""

import enum
import typing
from collections.abc import Iterable
from typing import Any

import msgspec

from protocol import relay
from protocol.errors import ErrorCode, ProtocolError
from protocol.limits import MAX_FRAME_BYTES
from protocol.messages import Frame


class WireFormat(enum.Enum):
    """A WebSocket subprotocol and the encoding it implies."""

    JSON = "roomctl.v1"  # text frames; the default for browsers
    MSGPACK = "roomctl.v1.msgpack"  # binary frames

    @property
    def subprotocol(self) -> str:
        return self.value

    @property
    def binary(self) -> bool:
        return self is WireFormat.MSGPACK


SUBPROTOCOLS: tuple[str, ...] = tuple(f.value for f in WireFormat)


def negotiate(offered: Iterable[str]) -> WireFormat | None:
    """Pick the wire format for a client's offered subprotocols.

    Returns JSON when the client offered none (plain WebSocket clients), the first
    offered format we speak otherwise, and None when it offered only unknown ones.
    """
    offered = [o.strip() for o in offered if o.strip()]
    if not offered:
        return WireFormat.JSON
    for name in offered:
        for fmt in WireFormat:
            if fmt.value == name:
                return fmt
    return None


class _RefOnly(msgspec.Struct):
    ref: Any = None


def _union(unique: tuple[type[Frame], ...]) -> Any:
    if not unique:
        raise ValueError("a codec needs at least one frame type")
    return typing.Union[unique]  # noqa: UP007 - built at run time from a tuple of types


def _size(data: bytes | str, limit: int) -> int:
    """Return the frame's size in bytes, or a lower bound when it is surely within ``limit``.

    Text frames arrive decoded (str); UTF-8 takes at most 4 bytes per character, so
    only long texts need encoding to be measured.
    """
    if isinstance(data, bytes) or len(data) * 4 <= limit:
        return len(data)
    return len(data.encode())


class Codec:
    """Encodes outgoing frames and decodes incoming ones in one wire format.

    ``incoming`` are the frame types this side accepts (requests on the daemon,
    events on a client). Relayed payloads (``protocol.relay``) are checked on the way in
    and converted on the way out only when they are in the other wire format.
    """

    def __init__(
        self,
        fmt: WireFormat,
        incoming: Iterable[type[Frame]],
        *,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.format = fmt
        self.max_frame_bytes = max_frame_bytes
        types = tuple(dict.fromkeys(incoming))
        union = _union(types)
        self._encoder: msgspec.json.Encoder | msgspec.msgpack.Encoder
        if fmt is WireFormat.JSON:
            self._encoder = msgspec.json.Encoder()
            self._decoder: Any = msgspec.json.Decoder(union)
            self._ref_decoder: Any = msgspec.json.Decoder(_RefOnly)
            decoder_type: Any = msgspec.json.Decoder
            self._foreign: Any = msgspec.msgpack.Decoder()  # a payload in the other format
        else:
            self._encoder = msgspec.msgpack.Encoder()
            self._decoder = msgspec.msgpack.Decoder(union)
            self._ref_decoder = msgspec.msgpack.Decoder(_RefOnly)
            decoder_type = msgspec.msgpack.Decoder
            self._foreign = msgspec.json.Decoder()
        # Forwarded payloads among the incoming types: their field and a checking decoder.
        self._checks: dict[type, tuple[str, Any]] = {
            kind: (name, decoder_type(schema))
            for kind, (name, schema) in relay.PAYLOADS.items() if kind in types
        }

    def encode(self, frame: Frame) -> bytes:
        """Return the frame's bytes (UTF-8 JSON text, or MessagePack)."""
        payload_field = relay.PAYLOADS.get(type(frame))
        if payload_field is not None:
            frame = self._in_my_format(frame, payload_field[0])
        return self._encoder.encode(frame)

    def _in_my_format(self, frame: Frame, name: str) -> Frame:
        """Return ``frame`` with its forwarded payload in this codec's format."""
        payload = getattr(frame, name)
        if relay.is_json(payload) == (self.format is WireFormat.JSON):
            return frame
        converted = msgspec.Raw(self._encoder.encode(self._foreign.decode(payload)))
        return msgspec.structs.replace(frame, **{name: converted})

    def decode(self, data: bytes | str) -> Frame:
        """Return the frame ``data`` holds.

        Raises ProtocolError: ``too-large`` over the frame limit, ``bad-request`` for
        malformed data, an unknown ``type``, or missing, mistyped or out-of-range fields.
        """
        size = _size(data, self.max_frame_bytes)
        if size > self.max_frame_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE, f"frame of {size} bytes is over {self.max_frame_bytes}"
            )
        if isinstance(data, str):
            if self.format is WireFormat.MSGPACK:
                raise ProtocolError(ErrorCode.BAD_REQUEST, "this connection expects binary frames")
        try:
            frame: Frame = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid frame: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"malformed frame: {exc}") from None
        # msgspec lets these through for a string that is not UTF-8 and for deep nesting.
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                "malformed frame: a string is not valid UTF-8") from None
        except RecursionError:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                "malformed frame: nested too deeply") from None
        check = self._checks.get(type(frame))
        if check is not None:
            self._check_payload(frame, *check)
        return frame

    @staticmethod
    def _check_payload(frame: Frame, name: str, decoder: Any) -> None:
        """Raise ProtocolError (bad-request) unless a forwarded payload fits its schema."""
        try:
            decoder.decode(getattr(frame, name))
        except msgspec.ValidationError as exc:
            # msgspec's path starts at the payload; say where that is in the frame.
            text = str(exc)
            text = text.replace("`$", f"`$.{name}") if "`$" in text else f"{text} - at `$.{name}`"
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid frame: {text}") from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                f"malformed frame: {name}: {exc}") from None

    def ref_of(self, data: bytes | str) -> str | None:
        """Best-effort ``ref`` of a frame that failed to decode, to echo in the error."""
        if _size(data, self.max_frame_bytes) > self.max_frame_bytes:
            return None
        try:
            ref = self._ref_decoder.decode(data).ref
        except (msgspec.DecodeError, TypeError, UnicodeDecodeError, RecursionError):
            return None
        return ref if isinstance(ref, str) and len(ref) <= 64 else None
