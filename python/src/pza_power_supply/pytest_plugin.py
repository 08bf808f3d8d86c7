"""The pytest plugin (entry point ``pytest11``): a ``pza_client`` fixture and its options.

``--pza-broker HOST:PORT`` (default ``127.0.0.1:1883``), ``--pza-namespace NS``, ``--pza-username
U`` (the password is read from the environment variable ``PZA_MQTT_PASSWORD``, as the server's
``ctl`` does, to keep it out of command lines) and ``--pza-timeout SECONDS``. The fixture is
session-scoped: one connection for the whole test run.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional, Tuple

import pytest

from ._client import Client
from ._protocol import check_namespace

DEFAULT_BROKER = "127.0.0.1:1883"
DEFAULT_TIMEOUT_S = 5.0
PASSWORD_ENV = "PZA_MQTT_PASSWORD"


def parse_broker(text: str) -> Tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT`` (``[::1]:1883`` for IPv6); ``ValueError`` saying why."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port of {text!r} must be a number between 1 and 65535")
    return host, int(port)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pza", "pza-power-supply (the pza_client fixture)")
    group.addoption(
        "--pza-broker",
        default=DEFAULT_BROKER,
        metavar="HOST:PORT",
        help=f"MQTT broker of the pza-power-supply server (default {DEFAULT_BROKER})",
    )
    group.addoption(
        "--pza-namespace",
        default=None,
        metavar="NS",
        help="the server's topic namespace (broker.namespace in its config; default none)",
    )
    group.addoption(
        "--pza-username",
        default=None,
        metavar="USER",
        help=f"MQTT login; the password is taken from ${PASSWORD_ENV}",
    )
    group.addoption(
        "--pza-timeout",
        default=DEFAULT_TIMEOUT_S,
        type=float,
        metavar="SECONDS",
        help=f"bound on each command's wait for its reply (default {DEFAULT_TIMEOUT_S:g})",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Bad options fail the run at once, with the option named, rather than in every test.
    try:
        parse_broker(config.getoption("pza_broker"))
    except ValueError as err:
        raise pytest.UsageError(f"--pza-broker: {err}") from err
    try:
        check_namespace(config.getoption("pza_namespace"))
    except ValueError as err:
        raise pytest.UsageError(f"--pza-namespace: {err}") from err
    timeout = config.getoption("pza_timeout")
    if not timeout > 0:
        raise pytest.UsageError(f"--pza-timeout: must be above 0 seconds, not {timeout}")


@pytest.fixture(scope="session")
def pza_client(pytestconfig: pytest.Config) -> Iterator[Client]:
    """A ``pza_power_supply.Client`` connected to ``--pza-broker``, shared by the session."""
    host, port = parse_broker(pytestconfig.getoption("pza_broker"))
    username: Optional[str] = pytestconfig.getoption("pza_username")
    with Client(
        host,
        port,
        namespace=pytestconfig.getoption("pza_namespace"),
        username=username,
        password=os.environ.get(PASSWORD_ENV) if username is not None else None,
        timeout=pytestconfig.getoption("pza_timeout"),
    ) as client:
        yield client
