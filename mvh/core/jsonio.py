"""The JSON round trip: what a value looks like after it was written as JSON and read back."""

from __future__ import annotations

import json
from typing import Any


def json_round_trip(value: Any) -> Any:
    """`value` as it comes back from JSON (tuples -> lists, keys -> str); TypeError if it is not JSON-able."""
    return json.loads(json.dumps(value))
