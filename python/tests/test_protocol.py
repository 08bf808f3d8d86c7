"""The MQTT contract's pure functions and the plugin's option parsing, without a broker."""

from __future__ import annotations

import json

import pytest

from pza_power_supply import PzaError, Rejected, Timeout
from pza_power_supply import _protocol as protocol
from pza_power_supply.pytest_plugin import parse_broker


@pytest.mark.parametrize(
    "value, text",
    [
        (5.0, "5.0"),
        (5, "5.0"),
        (0.1, "0.1"),
        (1e20, "100000000000000000000"),
        (1e-7, "0.0000001"),
        (-2.5, "-2.5"),
    ],
)
def test_values_are_written_as_plain_decimals(value: float, text: str) -> None:
    assert protocol.decimal_text("voltage", value) == text


def test_topics_with_and_without_namespace() -> None:
    assert protocol.topic(None, "psu", protocol.VOLTAGE_CMD) == "power-supply/psu/voltage/cmd"
    assert protocol.topic("bench-3", "psu", protocol.MEASURE) == "bench-3/power-supply/psu/measure"
    assert protocol.split_topic("bench-3", "bench-3/power-supply/psu/measure/voltage") == (
        "psu",
        "measure/voltage",
    )
    assert protocol.split_topic(None, "bench-3/power-supply/psu/voltage") is None
    assert protocol.split_topic(None, "power-supply/psu") is None
    assert protocol.presence_filters("a/b") == ["a/b/power-supply/+/status", "a/b/power-supply/+/info"]
    assert len(protocol.subscriptions(None, "psu")) == len(protocol.ATTRIBUTES)


def test_commands_carry_their_id() -> None:
    payload = protocol.encode_command("py-1", {"voltage": "5.0"})
    assert json.loads(payload) == {"pza_id": "py-1", "voltage": "5.0"}


def test_server_messages_are_read_leniently_but_never_wrongly() -> None:
    assert protocol.decode(b"") is None
    assert protocol.decode(b"not json") is None
    assert protocol.decode(b"[1]") is None
    assert protocol.number({"voltage": "5.00"}, "voltage") == 5.0
    assert protocol.number({"voltage": 5}, "voltage") == 5.0
    with pytest.raises(ValueError, match="'voltage' is missing"):
        protocol.number({}, "voltage")
    with pytest.raises(ValueError, match="not finite"):
        protocol.number({"voltage": "nan"}, "voltage")
    assert protocol.output_state({"state": "ON"}) is True
    with pytest.raises(ValueError, match="not ON or OFF"):
        protocol.output_state({"state": "on"})
    assert protocol.pza_id({"pza_id": None}) is None
    assert protocol.pza_id({"pza_id": "a1"}) == "a1"


@pytest.mark.parametrize("name", ["psu-1", "A_b", "x" * 64])
def test_valid_names(name: str) -> None:
    assert protocol.check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#", "x" * 65, "é"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="expected 1-64 characters"):
        protocol.check_name(name)


def test_exception_hierarchy() -> None:
    assert issubclass(Rejected, PzaError)
    assert issubclass(Timeout, PzaError) and issubclass(Timeout, TimeoutError)
    err = Rejected("voltage 31 exceeds security_max_voltage 30", "psu")
    assert (err.message, err.power_supply, str(err)) == (
        "voltage 31 exceeds security_max_voltage 30",
        "psu",
        err.message,
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("broker.lab:8883", ("broker.lab", 8883)),
        ("[::1]:1883", ("::1", 1883)),
    ],
)
def test_broker_option(text: str, expected: tuple) -> None:
    assert parse_broker(text) == expected


@pytest.mark.parametrize("text", ["localhost", ":1883", "host:", "host:0", "host:65536", "host:x"])
def test_bad_broker_option(text: str) -> None:
    with pytest.raises(ValueError):
        parse_broker(text)
