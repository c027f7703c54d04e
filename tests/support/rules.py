"""Rules several test modules share (as the dicts a rule file holds)."""

from __future__ import annotations

from typing import Any

PER_CUSTOMER_REQUESTS: dict[str, Any] = {
    "name": "api-requests",
    "match": {"signal": "metrics", "metric": "api.requests"},
    "event": {
        "type": "api-requests",
        "subject": {"path": "attributes.customer"},
        "data": {"count": {"path": "point.value", "as": "int"}},
    },
}
"""``api.requests`` points, one event per point, billed to the point's ``customer`` attribute."""

ACME_REQUESTS: dict[str, Any] = {
    "name": "requests",
    "match": {"signal": "metrics", "metric": "api.requests"},
    "event": {"type": "api", "subject": "acme", "data": {"n": {"path": "point.value", "as": "int"}}},
}
"""``api.requests`` points, one event per point, all billed to ``acme``."""
