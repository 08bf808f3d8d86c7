"""The exceptions raised by the package: one base class, and one class per way a command can fail."""

from __future__ import annotations

from typing import Optional


class PzaError(Exception):
    """Base class of every error raised by ``pza_power_supply``.

    Raised as such for a broker that cannot be reached or refuses the login, a closed client, or a
    reply the package cannot read.
    """


class Rejected(PzaError):
    """The server refused the command (its message on ``P/error``), e.g. a value over a limit.

    ``message`` is the server's text, e.g. ``"voltage 31 exceeds security_max_voltage 30"``;
    ``power_supply`` is the name of the power supply that refused it.
    """

    def __init__(self, message: str, power_supply: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.power_supply = power_supply


class Timeout(PzaError, TimeoutError):
    """No answer in time: an unknown or offline power supply, an unreachable broker, or a status
    that was not reached.

    It is also a built-in ``TimeoutError``, so ``except TimeoutError`` catches it.
    """
