"""CloudEvents as OpenMeter's ingest API takes them: body shapes per content type, and the
Event schema (``/work/shared/openmeter-ingest-openapi.yaml``) checked event by event.

Pure and synchronous (the events API calls it, fuzzers call it directly). The rules are OpenMeter's,
so that what we acknowledge OpenMeter will take: an event we accepted and OpenMeter refused would
end in the dead-letter store instead of being refused to its sender, who could still fix it.

* ``application/cloudevents+json``: one event object; ``application/cloudevents-batch+json``: an
  array (``[]`` is zero events); ``application/json``: either (``[]`` is refused: "no events found").
  Media type parameters (``; charset=utf-8``) are ignored.
* Required non-empty strings ``id``, ``source`` (a URI-reference), ``specversion`` (``"1.0"``),
  ``type``, ``subject``; optional (null allowed) ``time`` (RFC 3339), ``data`` (object),
  ``datacontenttype`` (``application/json``), ``dataschema`` (absolute URI).
* Other attributes are CloudEvents extensions: v1 takes lower-case alphanumeric names with string,
  boolean or 32-bit integer values; v3 (``strict``) takes none (``additionalProperties: false``).
* Any invalid event refuses the whole request (OpenMeter v1 does the same), naming every problem as
  ``event[<index>].<field>``; nothing of the request is stored.

Each accepted event is re-encoded as compact JSON with its attributes and their order kept.
Duplicate keys resolve to the last one and integers beyond 64 bits become floats, as in Go's
decoder, which OpenMeter uses.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from otlp_meter.errors import DecodeError, InvalidEventError, PayloadTooLargeError, UnsupportedMediaTypeError
from otlp_meter.events import EncodedEvent, encode_payload, format_time, rfc3339_millis
from otlp_meter.http_server import media_type

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
MEDIA_TYPES = (SINGLE, BATCH, JSON)
MAX_PROBLEMS = 100
"""Problems reported for one request at most (a 10 000-event batch of garbage answers briefly)."""

Problem = tuple[int | None, str, str]

_REQUIRED = ("id", "source", "specversion", "type", "subject")
_SCHEMA_KEYS = frozenset((*_REQUIRED, "time", "data", "datacontenttype", "dataschema"))
_EXTENSION_NAME = re.compile(r"[a-z0-9]+", re.ASCII)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:", re.ASCII)
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FIRST_SEGMENT = re.compile(r"[/?#]")
_QUERY = re.compile(r"\?[^#]*")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "boolean", str: "string", int: "number", float: "number", list: "array"}
    return names.get(type(value), "object")


def rfc3339_problem(value: str) -> str | None:
    """Why ``value`` is not an RFC 3339 date-time as Go's ``time.RFC3339Nano`` parses it, or None."""
    match = _RFC3339.fullmatch(value)
    if match is None:
        return "must be an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM))"
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    zone = match.group(8)
    try:
        if zone != "Z" and (int(zone[1:3]) > 23 or int(zone[4:6]) > 59):
            raise ValueError("offset out of range")
        datetime(year, month, day, hour, minute, second, tzinfo=timezone(timedelta(0)))
    except ValueError as exc:
        return f"must be a valid RFC 3339 date-time ({exc})"
    return None


def uri_reference_problem(value: str) -> str | None:
    """Why Go's ``url.Parse`` (CloudEvents sdk-go parses ``source`` with it) would refuse ``value``."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "must be a URI-reference (contains a control character)"
    if _BAD_ESCAPE.search(_QUERY.sub("", value)):  # Go does not check escapes in the query
        return "must be a URI-reference (invalid percent-escape)"
    if _SCHEME.match(value) is None and ":" in _FIRST_SEGMENT.split(value, maxsplit=1)[0]:
        return "must be a URI-reference (missing scheme or colon in first path segment)"
    return None


def _extension_value_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int | float) and _INT32_MIN <= value <= _INT32_MAX and float(value).is_integer():
        return None
    return f"a CloudEvents extension must be a string, boolean or 32-bit integer, got {_kind(value)}"


def validate_event(event: Any, index: int | None, *, strict: bool = False) -> list[Problem]:
    """Every way ``event`` violates the Event schema (v1), or MeteringEvent (v3) when ``strict``."""
    if not isinstance(event, dict):
        return [(index, "", f"must be a JSON object, got {_kind(event)}")]
    problems: list[Problem] = []
    for key in _REQUIRED:
        if key not in event:
            problems.append((index, key, "is required"))
        elif not isinstance(value := event[key], str):
            problems.append((index, key, f"must be a string, got {_kind(value)}"))
        elif not value:
            problems.append((index, key, "must not be empty"))
    if isinstance(version := event.get("specversion"), str) and version not in ("", "1.0"):
        problems.append((index, "specversion", 'must be "1.0"'))
    if isinstance(source := event.get("source"), str) and (problem := uri_reference_problem(source)):
        problems.append((index, "source", problem))
    if (value := event.get("time")) is not None:
        problem = (
            rfc3339_problem(value) if isinstance(value, str) else f"must be a string, got {_kind(value)}"
        )
        if problem:
            problems.append((index, "time", problem))
    if (value := event.get("data")) is not None and not isinstance(value, dict):
        problems.append((index, "data", f"must be a JSON object, got {_kind(value)}"))
    if (value := event.get("datacontenttype")) is not None and value != "application/json":
        problems.append((index, "datacontenttype", 'must be "application/json"'))
    if (value := event.get("dataschema")) is not None and (
        not isinstance(value, str) or _SCHEME.match(value) is None or uri_reference_problem(value)
    ):
        problems.append((index, "dataschema", "must be an absolute URI"))
    for key in event:
        if key in _SCHEMA_KEYS:
            continue
        if strict:
            problems.append((index, key, "is not allowed (MeteringEvent has additionalProperties: false)"))
        elif _EXTENSION_NAME.fullmatch(key) is None:
            problems.append((index, key, "is not a CloudEvents attribute name (only a-z and 0-9)"))
        elif problem := _extension_value_problem(event[key]):
            problems.append((index, key, problem))
    return problems


class TooManyEventsError(PayloadTooLargeError):
    """More events in one request than ``max_events_per_request``."""


def parse_events(
    body: bytes, content_type: str | None, *, strict: bool, max_events: int, received_ns: int | None = None
) -> list[EncodedEvent]:
    """The events of one ingest request, validated and encoded; raises what the status table maps.

    An event without a ``time`` (absent or null) gets ``received_ns`` (default: now): OpenMeter
    stamps such an event with the moment it receives it, and an event held here through an
    outage must not be billed in the period it is finally delivered in.

    UnsupportedMediaTypeError: not one of the three content types. DecodeError: not JSON or the
    wrong shape. PayloadTooLargeError: more than ``max_events``. InvalidEventError: any event
    breaks the schema (the whole request is refused).
    """
    media = media_type(content_type)
    if media not in MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            f"invalid content type: {media or '(none)'!r}; use {SINGLE}, {BATCH} or {JSON}"
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid event: request body is not valid JSON: {exc}") from None
    if media == SINGLE and not isinstance(document, dict):
        raise DecodeError(f"invalid event: a {SINGLE} body must be one event object, got {_kind(document)}")
    if media == BATCH and not isinstance(document, list):
        raise DecodeError(f"invalid event: a {BATCH} body must be an array of events, got {_kind(document)}")
    if not isinstance(document, dict | list):
        raise DecodeError(
            f"invalid event: the body must be an event or an array of events, got {_kind(document)}"
        )
    if media == JSON and document == []:
        raise DecodeError("invalid event: no events found")
    batch = isinstance(document, list)
    items: list[Any] = document if isinstance(document, list) else [document]
    if len(items) > max_events:
        raise TooManyEventsError(
            f"the request holds {len(items)} events; at most {max_events} are taken per request "
            "(receivers.events_api.max_events_per_request): split the batch"
        )
    problems: list[Problem] = []
    for i, item in enumerate(items):
        problems.extend(validate_event(item, i if batch else None, strict=strict))
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise InvalidEventError(problems[:MAX_PROBLEMS])
    received: str | None = None
    for e in items:
        if e.get("time") is None:
            if received is None:
                received = format_time(time.time_ns() if received_ns is None else received_ns)
            e["time"] = received
    # time_ms orders the queue's dedupe keys; the time was validated above.
    return [EncodedEvent(e["source"], e["id"], encode_payload(e), rfc3339_millis(e["time"])) for e in items]
