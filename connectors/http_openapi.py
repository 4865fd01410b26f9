"""The OpenAPI 3 document of the HTTP ingest, served at ``GET /openapi.json``.

Kept next to the server (:mod:`connectors.bridge_http`); a unit test checks that it lists
exactly the routes the server answers.
"""

from __future__ import annotations

import copy

from operators.device_id import DEVICE_ID_PATTERN

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
    "413": _json_error("Body larger than the limit (default 1 MiB)."),
    "415": _json_error("Unsupported `Content-Type`."),
    "503": {
        "description": "Kafka did not confirm the records within the ack timeout. Resend after `Retry-After` seconds; "
        "a record answered 503 may still have been stored (at least once).",
        "headers": {"Retry-After": {"description": "Seconds to wait before resending.", "schema": {"type": "integer", "minimum": 0}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unavailable"}}},
    },
}

_DOCUMENT = {
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
                "oneOf": [
                    _batch_record("json", {"oneOf": [{"type": "object"}, {"type": "array", "items": {}}]}, None),
                    _batch_record("csv", {"type": "string", "minLength": 1}, "utf8"),
                    _batch_record("hex", {"type": "string", "pattern": HEX_TEXT_PATTERN}, "utf8"),
                    _batch_record("bin", {"type": "string", "pattern": BASE64_PATTERN}, "base64"),
                ],
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
                    "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
        },
    },
    "paths": {
        "/v1/telemetry/{device_id}": {
            "post": {
                "operationId": "postTelemetry",
                "summary": "Ingest one payload of one device",
                "description": "The `Content-Type` is the payload's format hint. The body is stored byte-exact.",
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "device_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN},
                    },
                    {
                        "name": "product_id", "in": "query", "required": False, "description": "Product id hint.",
                        "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {}, "example": {"device_timestamp": 1756653767451, "data": {"metrics": {"tempC": 21.5}}}},
                        "text/csv": {"schema": {"type": "string", "minLength": 1}, "example": "ts,tempC\n1756653767451,21.5\n"},
                        "application/octet-stream": {"schema": {"type": "string", "format": "binary", "minLength": 1}},
                        "text/plain": {"schema": {"type": "string", "pattern": HEX_TEXT_PATTERN},
                                       "description": "Hex text (format hex): `00FD3C`, `00 FD 3C`, `0x00 0xFD`, `00:FD`, `00-FD`."},
                    },
                },
                "responses": {
                    "202": _json("Stored: Kafka confirmed the record.", "Accepted"),
                    "400": _json_error("Invalid device id, empty body, or a body that is not what its Content-Type says."),
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/v1/telemetry:batch": {
            "post": {
                "operationId": "postTelemetryBatch",
                "summary": "Ingest several payloads (any devices) in one request",
                "description": "Validation is all or nothing: one invalid record answers 400 listing every invalid one, and "
                "nothing is stored. 202 means Kafka confirmed every record; on 503, `results` says which were stored.",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "array", "minItems": 1, "maxItems": 1000, "items": {"$ref": "#/components/schemas/BatchRecord"}},
                            "example": [
                                {"device_id": "dev-1", "format": "json", "payload": {"data": {"metrics": {"tempC": 21.5}}}},
                                {"device_id": "dev-2", "format": "bin", "payload": "AAEC/w=="},
                                {"device_id": "dev-3", "format": "hex", "payload": "0102ff"},
                            ],
                        }
                    },
                },
                "responses": {
                    "202": _json("Every record stored.", "Accepted"),
                    "400": _json_error("Not a JSON array of valid records (`details` lists each invalid record)."),
                    **_RESPONSES_COMMON,
                },
            }
        },
        "/health": {
            "get": {
                "operationId": "getHealth",
                "summary": "Whether Kafka answers, and the counters",
                "security": [],
                "responses": {
                    "200": _json("Kafka answers.", "Health"),
                    "503": _json("Kafka does not answer.", "Health"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "The OpenAPI 3 document.", "content": {"application/json": {"schema": {"type": "object"}}}}},
            }
        },
    },
    "security": [{"bearer": []}],
}


def openapi_document() -> dict:
    """A copy of the OpenAPI 3 document (callers may change it freely)."""
    return copy.deepcopy(_DOCUMENT)
