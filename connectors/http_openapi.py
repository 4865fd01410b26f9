"""The HTTP ingest's routes, and the OpenAPI 3 document made from them (``GET /openapi.json``).

Each route is declared once, as a :class:`Route`: its method and path, what it takes and answers,
and the name of the ingest's method that serves it. The server (:mod:`connectors.bridge_http`)
matches requests against :data:`ROUTES` and calls that method; :func:`openapi_document` writes
the ``paths`` of the document from the same declarations, with the limits the server runs
with, so the document cannot list a route the server does not answer or miss one it does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from operators.device_id import DEVICE_ID_PATTERN
from operators.envelope import FORMATS

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_BATCH_RECORDS = 1000

_ERROR = {"$ref": "#/components/schemas/Error"}


# Hex text as operators/hex_text.py accepts it: whole bytes, each group with an optional 0x,
# groups separated by whitespace, ':', ',' or '-'.
HEX_TEXT_PATTERN = r"^\s*(?:0[xX])?(?:[0-9A-Fa-f]{2})+(?:[\s:,\-]+(?:0[xX])?(?:[0-9A-Fa-f]{2})+)*\s*$"
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$|^[A-Za-z0-9+/]{2}==$|^[A-Za-z0-9+/]{3}=$"


def _batch_record(fmt: str, payload: dict, encoding: str | None) -> dict:
    properties = {
        "device_id": {"type": "string", "pattern": DEVICE_ID_PATTERN},
        "format": {"type": "string", "enum": [fmt]},
        "payload": payload,
        "product_id": {"type": "string", "pattern": DEVICE_ID_PATTERN, "nullable": True,
                       "description": "Product id hint (default, or null: from the device registry)."},
    }
    if encoding is not None:
        properties["payload_encoding"] = {"type": "string", "enum": [encoding]}
    return {"type": "object", "required": ["device_id", "format", "payload"], "additionalProperties": False, "properties": properties}


# Format -> (the payload's schema in a batch record, its declared payload_encoding).
_BATCH_PAYLOADS = {
    "json": ({"oneOf": [{"type": "object"}, {"type": "array", "items": {}}]}, None),
    "csv": ({"type": "string", "minLength": 1}, "utf8"),
    "hex": ({"type": "string", "pattern": HEX_TEXT_PATTERN}, "utf8"),
    "bin": ({"type": "string", "pattern": BASE64_PATTERN}, "base64"),
}


def _json_error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _json(description: str, schema: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


_RESPONSES_COMMON = {
    "401": _json_error("Missing, malformed or unknown bearer token (`WWW-Authenticate: Bearer`)."),
    "403": _json_error("`tenant_mismatch`: the token is bound to a tenant and a record is for a device of another tenant, of "
                       "none, or not in the device registry. Those records go to the dead-letter topic with the reason; "
                       "nothing of the request is stored."),
    "411": _json_error("Neither `Content-Length` nor `Transfer-Encoding: chunked`. "
                       "(Ambiguous framing — `Transfer-Encoding` with `Content-Length`, repeated or invalid "
                       "`Content-Length` values, folded or malformed header lines — is answered 400 `malformed_request` "
                       "and the connection closed.)"),
    "415": _json_error("Unsupported `Content-Type`."),
    "503": {
        "description": "Kafka did not confirm the records within the ack timeout. Resend after `Retry-After` seconds; "
        "a record answered 503 may still have been stored (at least once).",
        "headers": {"Retry-After": {"description": "Seconds to wait before resending.", "schema": {"type": "integer", "minimum": 0}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unavailable"}}},
    },
}

_COMPONENTS_AND_INFO = {
    "openapi": "3.0.3",
    "info": {
        "title": "iotlink HTTP ingest",
        "version": "1.0.0",
        "description": "Devices and gateways post telemetry payloads; each becomes one raw envelope on the Kafka topic "
        "`iotlink.raw` (payload byte-exact, keyed by device id). `202 Accepted` is answered only after Kafka confirmed "
        "every record of the request.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A token from the server's token file."}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string", "description": "Machine-readable code, e.g. `invalid_json`, `unauthorized`."},
                    "message": {"type": "string", "description": "Precise, human-readable reason."},
                    "details": {
                        "type": "array",
                        "description": "Batch requests: every invalid record.",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": {"type": "integer"},
                                "field": {"type": "string", "nullable": True},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Unavailable": {
                "allOf": [
                    {"$ref": "#/components/schemas/Error"},
                    {
                        "type": "object",
                        "properties": {
                            "results": {
                                "type": "array",
                                "description": "Batch requests: per record, `stored` (confirmed by Kafka) or `failed` (resend it).",
                                "items": {
                                    "type": "object",
                                    "properties": {"index": {"type": "integer"}, "status": {"type": "string", "enum": ["stored", "failed"]}},
                                },
                            }
                        },
                    },
                ]
            },
            "Accepted": {
                "type": "object",
                "required": ["accepted", "received_at"],
                "properties": {
                    "accepted": {"type": "integer", "description": "Records confirmed by Kafka."},
                    "received_at": {"type": "integer", "description": "Receive time, epoch milliseconds UTC (the envelopes' `received_at`)."},
                    "device_id": {"type": "string"},
                },
            },
            "BatchRecord": {
                "description": "One payload. `payload` is text (`payload_encoding` utf8, the default except for `bin`) or "
                "base64 (`payload_encoding` base64, the default for `bin`); for format `json` also the JSON object or array "
                "itself (stored compact). (The server also takes utf8 payloads for `bin` and base64 for the others.)",
                # One alternative per envelope format: a format without a schema here fails at import.
                "oneOf": [_batch_record(fmt, *_BATCH_PAYLOADS[fmt]) for fmt in sorted(FORMATS)],
            },
            "Health": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "kafka_unreachable"]},
                    "kafka": {
                        "type": "object",
                        "properties": {"bootstrap_servers": {"type": "string"}, "reachable": {"type": "boolean"}, "topic": {"type": "string"}},
                    },
                    "in_flight": {"type": "integer"},
                    "uptime_s": {"type": "number"},
                    "counters": {"type": "object", "additionalProperties": {"type": "integer"},
                                 "description": "Of the worker process that answered (`--workers`)."},
                    "worker": {"type": "integer", "minimum": 0, "description": "Which worker process answered (0 with one)."},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Route:
    """One route of the HTTP ingest: how it is matched, which method of the ingest serves it, and
    its OpenAPI operation.

    Attributes:
        method: The HTTP method.
        path: The path template; a parameter may only be its last segment (``/v1/telemetry/{device_id}``).
        handler: The name of the :class:`connectors.bridge_http.HttpIngest` method that answers it.
        operation_id: The operation's ``operationId``.
        summary: One line for the document.
        description: More for the document.
        public: Answered without a bearer token.
        parameters: OpenAPI parameter objects.
        request_body: The OpenAPI request body, or None.
        responses: Status -> OpenAPI response object (the common error answers are added to
            every route that takes a token).
    """

    method: str
    path: str
    handler: str
    operation_id: str
    summary: str
    description: str = ""
    public: bool = False
    parameters: tuple[dict, ...] = ()
    request_body: dict | None = None
    responses: dict = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The literal part of the path before its parameter (the whole path when it has none)."""
        return self.path.split("{", 1)[0]

    @property
    def parameter(self) -> str | None:
        """The name of the path's parameter, or None."""
        return self.path[len(self.prefix) + 1 : -1] if "{" in self.path else None

    def operation(self, limits: dict) -> dict:
        """The OpenAPI operation object, with the server's ``limits`` filled in."""
        operation: dict = {"operationId": self.operation_id, "summary": self.summary}
        if self.description:
            operation["description"] = self.description
        operation["security"] = [] if self.public else [{"bearer": []}]
        if self.parameters:
            operation["parameters"] = list(self.parameters)
        if self.request_body is not None:
            operation["requestBody"] = _with_limits(self.request_body, limits)
        responses = dict(self.responses)
        if not self.public:
            responses.update(_RESPONSES_COMMON)
            responses["413"] = _json_error(f"Body larger than the limit ({limits['max_body_bytes']} bytes).")
        operation["responses"] = {status: responses[status] for status in sorted(responses)}
        return operation


def _with_limits(body: dict, limits: dict) -> dict:
    """A copy of a request body whose ``maxItems`` of ``"max_batch_records"`` is the server's limit."""
    body = copy.deepcopy(body)
    for content in body.get("content", {}).values():
        schema = content.get("schema", {})
        if schema.get("maxItems") == "max_batch_records":
            schema["maxItems"] = limits["max_batch_records"]
    return body


TELEMETRY_ROUTE = Route(
    "POST", "/v1/telemetry/{device_id}", "post_telemetry", "postTelemetry",
    "Ingest one payload of one device",
    "The `Content-Type` is the payload's format hint. The body is stored byte-exact.",
    parameters=(
        {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}},
        {"name": "product_id", "in": "query", "required": False, "description": "Product id hint.",
         "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}},
    ),
    request_body={
        "required": True,
        "content": {
            "application/json": {"schema": {}, "example": {"device_timestamp": 1756653767451, "data": {"metrics": {"tempC": 21.5}}}},
            "text/csv": {"schema": {"type": "string", "minLength": 1}, "example": "ts,tempC\n1756653767451,21.5\n"},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
            "text/plain": {"schema": {"type": "string", "pattern": HEX_TEXT_PATTERN},
                           "description": "Hex text (format hex): `00FD3C`, `00 FD 3C`, `0x00 0xFD`, `00:FD`, `00-FD`."},
        },
    },
    responses={
        "202": _json("Stored: Kafka confirmed the record.", "Accepted"),
        "400": _json_error("Invalid device id, empty body, or a body that is not what its Content-Type says."),
    },
)

BATCH_ROUTE = Route(
    "POST", "/v1/telemetry:batch", "post_batch", "postTelemetryBatch",
    "Ingest several payloads (any devices) in one request",
    "Validation is all or nothing: one invalid record answers 400 listing every invalid one, and "
    "nothing is stored. 202 means Kafka confirmed every record; on 503, `results` says which were stored.",
    request_body={
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "array", "minItems": 1, "maxItems": "max_batch_records", "items": {"$ref": "#/components/schemas/BatchRecord"}},
                "example": [
                    {"device_id": "dev-1", "format": "json", "payload": {"data": {"metrics": {"tempC": 21.5}}}},
                    {"device_id": "dev-2", "format": "bin", "payload": "AAEC/w=="},
                    {"device_id": "dev-3", "format": "hex", "payload": "0102ff"},
                ],
            }
        },
    },
    responses={
        "202": _json("Every record stored.", "Accepted"),
        "400": _json_error("Not a JSON array of valid records (`details` lists each invalid record)."),
    },
)

HEALTH_ROUTE = Route(
    "GET", "/health", "get_health", "getHealth", "Whether Kafka answers, and the counters", public=True,
    responses={"200": _json("Kafka answers.", "Health"), "503": _json("Kafka does not answer.", "Health")},
)

OPENAPI_ROUTE = Route(
    "GET", "/openapi.json", "get_openapi", "getOpenApi", "This document", public=True,
    responses={"200": {"description": "The OpenAPI 3 document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
)

# Every route the ingest answers, in the order the document lists them.
ROUTES: tuple[Route, ...] = (TELEMETRY_ROUTE, BATCH_ROUTE, HEALTH_ROUTE, OPENAPI_ROUTE)


def openapi_document(max_batch_records: int = DEFAULT_MAX_BATCH_RECORDS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                     routes: tuple[Route, ...] = ROUTES) -> dict:
    """The OpenAPI 3 document of ``routes``, with the limits the server runs with.

    Args:
        max_batch_records: Records a batch request may hold (``maxItems``).
        max_body_bytes: The body size limit (the 413 answer).
        routes: The routes to describe (the ingest's own by default).

    Returns:
        A new dict (callers may change it freely).
    """
    limits = {"max_batch_records": max_batch_records, "max_body_bytes": max_body_bytes}
    document = copy.deepcopy(_COMPONENTS_AND_INFO)
    paths: dict = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = route.operation(limits)
    document["paths"] = paths
    document["security"] = [{"bearer": []}]
    return document
