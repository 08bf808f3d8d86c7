"""The MQTT contract of pza-power-supply as pure functions: topic names, name checks, payloads.

Nothing here does I/O, so that the contract can be tested without a broker. The topics are those of
the server's "MQTT API" (prefix ``P`` = ``[<namespace>/]power-supply/<name>``).
"""

from __future__ import annotations

import decimal
import json
import math
import numbers
import re
from typing import Any, Dict, List, Optional, Tuple

POWER_SUPPLY_LEVEL = "power-supply"

STATUS = "status"
ERROR = "error"
STATE = "state"
VOLTAGE = "voltage"
CURRENT = "current"
MEASURE_VOLTAGE = "measure/voltage"
MEASURE_CURRENT = "measure/current"
MEASURE = "measure"
INFO = "info"
STATE_CMD = "state/cmd"
VOLTAGE_CMD = "voltage/cmd"
CURRENT_CMD = "current/cmd"
RESTART_CMD = "restart/cmd"
MEASURE_CMD = "measure/cmd"

# The server-to-client topics of one power supply. A handle subscribes to exactly these (not to
# ``P/#``), so that it does not receive the commands that it and other clients send.
ATTRIBUTES: Tuple[str, ...] = (
    STATUS,
    ERROR,
    STATE,
    VOLTAGE,
    CURRENT,
    MEASURE_VOLTAGE,
    MEASURE_CURRENT,
    MEASURE,
    INFO,
)

# The topics whose retained messages tell which power supplies exist (as ``ctl list`` reads them).
PRESENCE: Tuple[str, ...] = (STATUS, INFO)

STATUSES: Tuple[str, ...] = ("Initializing", "Running", "Panicking", "Restarting", "Failed", "Stopped")

# Runner names become one MQTT topic level; the server accepts exactly these.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAMESPACE_LEVEL = re.compile(r"[A-Za-z0-9_-]+")


def check_name(name: object) -> str:
    """Returns ``name`` if it is a valid power supply name, else raises ``ValueError`` saying why."""
    if not isinstance(name, str):
        raise TypeError(f"power supply name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"power supply name {name!r} is invalid: expected 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return name


def check_namespace(namespace: Optional[str]) -> Optional[str]:
    """Returns ``namespace`` (``None`` or ``""`` for none) if valid, else raises ``ValueError``."""
    if namespace is None or namespace == "":
        return None
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    if not all(_NAMESPACE_LEVEL.fullmatch(level) for level in namespace.split("/")):
        raise ValueError(
            f"namespace {namespace!r} is invalid: expected topic levels of A-Z a-z 0-9 _ - joined by /"
        )
    return namespace


def root(namespace: Optional[str]) -> str:
    """The topic level under which every power supply lives: ``[<namespace>/]power-supply``."""
    return f"{namespace}/{POWER_SUPPLY_LEVEL}" if namespace else POWER_SUPPLY_LEVEL


def topic(namespace: Optional[str], name: str, suffix: str) -> str:
    """The full topic ``[<namespace>/]power-supply/<name>/<suffix>``."""
    return f"{root(namespace)}/{name}/{suffix}"


def split_topic(namespace: Optional[str], full: str) -> Optional[Tuple[str, str]]:
    """``(name, suffix)`` of a power supply topic, or ``None`` for any other topic."""
    head = root(namespace) + "/"
    if not full.startswith(head):
        return None
    name, sep, suffix = full[len(head) :].partition("/")
    if not sep or not name or not suffix:
        return None
    return name, suffix


def decimal_text(field: str, value: object) -> str:
    """``value`` as the plain decimal string the server expects (``"5.0"``, never ``"1e+20"``).

    Raises ``TypeError`` for anything but a real number, and ``ValueError`` for NaN or infinity
    (the server would refuse them too, but the caller learns it without a round trip). Range checks
    are left to the server: its security limits are the one gate.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{field} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{field} must be a finite number, not {number}")
    # repr() gives the shortest text that reads back as the same float; Decimal then writes it
    # without an exponent, which the server requires.
    return format(decimal.Decimal(repr(number)), "f")


def encode_command(pza_id: str, fields: Dict[str, str]) -> bytes:
    """The JSON payload of a command: ``{"pza_id": ..., **fields}``."""
    body: Dict[str, Any] = {"pza_id": pza_id}
    body.update(fields)
    return json.dumps(body).encode()


def decode(payload: bytes) -> Optional[Dict[str, Any]]:
    """A server message as a dict, or ``None`` if it is empty (a deleted retained message) or not a
    JSON object."""
    if not payload:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def number(body: Dict[str, Any], field: str) -> float:
    """The number in ``body[field]`` (a decimal string or a JSON number); ``ValueError`` otherwise."""
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"field {field!r} is missing or not a number: {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"field {field!r} is not finite: {value!r}")
    return result


def output_state(body: Dict[str, Any]) -> bool:
    """``True`` for ``"state": "ON"``, ``False`` for ``"OFF"``; ``ValueError`` otherwise."""
    state = body.get("state")
    if state == "ON":
        return True
    if state == "OFF":
        return False
    raise ValueError(f"field 'state' is not ON or OFF: {state!r}")


def pza_id(body: Dict[str, Any]) -> Optional[str]:
    """The message's ``pza_id`` if it is a string (the correlation id of a reply)."""
    value = body.get("pza_id")
    return value if isinstance(value, str) else None


def subscriptions(namespace: Optional[str], name: str) -> List[str]:
    """The topic filters a handle on power supply ``name`` subscribes to."""
    return [topic(namespace, name, suffix) for suffix in ATTRIBUTES]


def presence_filters(namespace: Optional[str]) -> List[str]:
    """The wildcard filters whose retained messages tell which power supplies exist."""
    return [f"{root(namespace)}/+/{suffix}" for suffix in PRESENCE]
