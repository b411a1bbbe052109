"""The HTTP API as an OpenAPI 3.1 document (``GET /v1/openapi.json``), made, not written.

The paths come from the API's endpoint table (``daemon.net.httpapi.ENDPOINTS``) and the
schemas from the msgspec types of its bodies (``protocol.http``) through
``msgspec.json.schema_components``: what the document says is what the code decodes and
encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from daemon.net.httpapi import Endpoint
from protocol import http as api
from protocol.messages import PROTOCOL_VERSION

__all__ = ["document"]

_REF = "#/components/schemas/{name}"
_JSON = "application/json"
_TEXT = "text/plain"
_EVENTS = "text/event-stream"

DESCRIPTION = (
    "REST over JSON beside each room's WebSocket path (see roomctl-http(7) and "
    "roomctl-protocol(7)). Authorization: Bearer with the admin token or a join token; "
    "the grants are the WebSocket protocol's. Every error answers with the status that "
    "fits and a body {\"error\": {\"code\", \"message\"}}, the code one of the protocol's "
    "error codes.")


def document(endpoints: Sequence[Endpoint]) -> dict[str, Any]:
    """Return the OpenAPI document of ``endpoints`` (and of /healthz and /access)."""
    types: list[Any] = [api.ErrorBody, api.PublicRoomPage, api.Health, api.RoomAccess]
    for endpoint in endpoints:
        types += [t for t in (endpoint.answer, endpoint.body) if t is not None]
    types = list(dict.fromkeys(types))
    refs, schemas = msgspec.json.schema_components(types, ref_template=_REF)
    ref_of = dict(zip(types, refs, strict=True))
    error = {"description": "An error: its status, and the protocol's error code.",
             "content": {_JSON: {"schema": ref_of[api.ErrorBody]}}}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        operation: dict[str, Any] = {
            "operationId": endpoint.operation,
            "summary": endpoint.summary,
            "description": f"Needs {endpoint.needs}.",
            "responses": {str(endpoint.status): _success(endpoint, ref_of), "default": error},
        }
        if endpoint.params:
            operation["parameters"] = [
                {"name": p.name, "in": p.where, "description": p.description,
                 "required": p.required, "schema": p.schema} for p in endpoint.params]
        if endpoint.body is not None:
            content = {kind: {"schema": ref_of[endpoint.body]} for kind in endpoint.body_types
                       if kind != _TEXT}
            if _TEXT in endpoint.body_types:
                content[_TEXT] = {"schema": {
                    "type": "string", "description": "One message per line with text; "
                                                     "blank lines are skipped."}}
            operation["requestBody"] = {"required": True, "content": content}
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation
    paths["/v1/rooms"]["get"]["responses"]["200"]["content"][_JSON]["schema"] = {
        "oneOf": [ref_of[api.RoomPage], ref_of[api.PublicRoomPage]]}
    paths["/healthz"] = {"get": {
        "operationId": "health", "summary": "Whether the daemon runs, and its version.",
        "security": [{}],
        "responses": {"200": {"description": "It runs.",
                              "content": {_JSON: {"schema": ref_of[api.Health]}}}}}}
    paths["/v1/rooms/{room}/access"] = {"get": {
        "operationId": "checkAccess",
        "summary": "Whether a hello with this token would be let into the room.",
        "parameters": [{"name": "room", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "The answer a hello would get.",
                              "content": {_JSON: {"schema": ref_of[api.RoomAccess]}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "roomctl HTTP API", "version": f"v{PROTOCOL_VERSION}",
                 "description": DESCRIPTION},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "The admin token, or a join token (a JWT) for one room."}},
        },
        "security": [{"bearer": []}, {}],
    }


def _success(endpoint: Endpoint, ref_of: dict[Any, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": endpoint.summary}
    if endpoint.content == _EVENTS:
        answer["content"] = {_EVENTS: {"schema": {
            "type": "string",
            "description": "Events 'message': id the seq, data the message as JSON."}}}
    elif endpoint.answer is not None:
        answer["content"] = {endpoint.content: {"schema": ref_of[endpoint.answer]}}
    elif endpoint.status != 204:
        answer["content"] = {endpoint.content: {"schema": {"type": "object"}}}
    return answer
