"""A handle on one power supply: its commands, and the latest values the server published."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, TypeVar

from . import _protocol as protocol
from ._errors import PzaError, Timeout

if TYPE_CHECKING:
    from ._client import Client

log = logging.getLogger("pza_power_supply")

T = TypeVar("T")


class PowerSupply:
    """One power supply served by a pza-power-supply server; get it from
    ``Client.power_supply(name)``.

    Every command waits for the server's one reply and returns the value the server read back
    from the device. A refusal (a value outside the security limits, a device error, a driver that
    panicked) raises ``Rejected`` with the server's message; no answer within the timeout raises
    ``Timeout``. ``timeout`` (seconds) defaults to the client's.

    The properties are the latest values the server published (no I/O), ``None`` while unknown. A
    setpoint (``voltage``, ``current``) is what the device was told, not a measurement.
    """

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name
        self._status: Optional[str] = None
        self._restarts: Optional[int] = None
        self._panic_message: Optional[str] = None
        self._output: Optional[bool] = None
        self._voltage: Optional[float] = None
        self._current: Optional[float] = None
        self._measured_voltage: Optional[float] = None
        self._measured_current: Optional[float] = None
        self._info: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<PowerSupply {self.name!r} status={self.status!r}>"

    def set_voltage(self, volts: float, timeout: Optional[float] = None) -> float:
        """Sets the voltage setpoint; returns the setpoint read back from the device (volts)."""
        text = protocol.decimal_text("voltage", volts)
        body = self._request(protocol.VOLTAGE_CMD, protocol.VOLTAGE, {"voltage": text}, timeout)
        return self._read(protocol.VOLTAGE, body, lambda b: protocol.number(b, "voltage"))

    def set_current(self, amps: float, timeout: Optional[float] = None) -> float:
        """Sets the current limit; returns the limit read back from the device (amps)."""
        text = protocol.decimal_text("current", amps)
        body = self._request(protocol.CURRENT_CMD, protocol.CURRENT, {"current": text}, timeout)
        return self._read(protocol.CURRENT, body, lambda b: protocol.number(b, "current"))

    def enable_output(self, timeout: Optional[float] = None) -> bool:
        """Switches the output on; returns the output state read back (``True``: on)."""
        return self._set_output("ON", timeout)

    def disable_output(self, timeout: Optional[float] = None) -> bool:
        """Switches the output off; returns the output state read back (``False``: off)."""
        return self._set_output("OFF", timeout)

    def _set_output(self, state: str, timeout: Optional[float]) -> bool:
        body = self._request(protocol.STATE_CMD, protocol.STATE, {"state": state}, timeout)
        return self._read(protocol.STATE, body, protocol.output_state)

    def measure(self, timeout: Optional[float] = None) -> Tuple[float, float]:
        """Measures now; returns ``(voltage, current)`` as measured by the device."""
        body = self._request(protocol.MEASURE_CMD, protocol.MEASURE, {}, timeout)
        return self._read(
            protocol.MEASURE,
            body,
            lambda b: (protocol.number(b, "voltage"), protocol.number(b, "current")),
        )

    def restart(self, timeout: Optional[float] = None) -> None:
        """Restarts the runner now (also revives a ``Failed`` one); returns once the server has
        scheduled it. Use ``wait_for_status("Running")`` to wait until it is back."""
        self._request(protocol.RESTART_CMD, protocol.STATUS, {}, timeout)

    def wait_for_status(self, status: str, timeout: Optional[float] = None) -> None:
        """Returns once the latest known status is ``status`` (at once if it already is).

        ``status`` is one of ``Initializing``, ``Running``, ``Panicking``, ``Restarting``,
        ``Failed``, ``Stopped``. Raises ``Timeout`` (naming the last status seen, and the panic
        message if any) when it is not reached within ``timeout`` seconds.
        """
        if status not in protocol.STATUSES:
            raise ValueError(f"status {status!r} is not one of {', '.join(protocol.STATUSES)}")
        client = self._client
        seconds = client._wait_seconds(timeout)
        with client._cond:
            reached = client._cond.wait_for(lambda: client._closed or self._status == status, seconds)
            client._check_open()
            if reached:
                return
            last, panic = self._status, self._panic_message
        detail = f"; panic_message: {panic}" if panic else ""
        raise Timeout(
            f"power supply {self.name}: status {status} not reached within {seconds:g} s "
            f"(last known status: {last}{detail})"
        )

    @property
    def status(self) -> Optional[str]:
        """The runner's status: ``Initializing``, ``Running``, ``Panicking``, ``Restarting``,
        ``Failed`` or ``Stopped``."""
        with self._client._cond:
            return self._status

    @property
    def restarts(self) -> Optional[int]:
        """How many times the runner was restarted since the server started."""
        with self._client._cond:
            return self._restarts

    @property
    def panic_message(self) -> Optional[str]:
        """Why the runner last crashed (kept while ``Panicking``, ``Restarting`` or ``Failed``)."""
        with self._client._cond:
            return self._panic_message

    @property
    def output(self) -> Optional[bool]:
        """Whether the output is on."""
        with self._client._cond:
            return self._output

    @property
    def voltage(self) -> Optional[float]:
        """The voltage setpoint (volts)."""
        with self._client._cond:
            return self._voltage

    @property
    def current(self) -> Optional[float]:
        """The current limit (amps)."""
        with self._client._cond:
            return self._current

    @property
    def measured_voltage(self) -> Optional[float]:
        """The last measured voltage (volts)."""
        with self._client._cond:
            return self._measured_voltage

    @property
    def measured_current(self) -> Optional[float]:
        """The last measured current (amps)."""
        with self._client._cond:
            return self._measured_current

    @property
    def info(self) -> Optional[Dict[str, Any]]:
        """The ``P/info`` payload without its ``pza_id``: ``model``, ``description``, the
        ``security_*`` limits, ``voltage_decimals``, ``current_decimals``. A copy."""
        with self._client._cond:
            return dict(self._info) if self._info is not None else None

    def _request(
        self, command: str, reply: str, fields: Dict[str, str], timeout: Optional[float]
    ) -> Dict[str, Any]:
        return self._client._request(self.name, command, reply, fields, timeout)

    def _read(self, suffix: str, body: Dict[str, Any], parse: Callable[[Dict[str, Any]], T]) -> T:
        try:
            return parse(body)
        except ValueError as err:
            raise PzaError(f"power supply {self.name}: unreadable reply on {suffix}: {err}") from err

    def _apply(self, suffix: str, body: Dict[str, Any]) -> None:
        """Takes in one message of this power supply (called with the client's lock held)."""
        try:
            if suffix == protocol.STATUS:
                status = body.get("status")
                if isinstance(status, str):
                    self._status = status
                restarts = body.get("restarts")
                if isinstance(restarts, int) and not isinstance(restarts, bool):
                    self._restarts = restarts
                panic = body.get("panic_message")
                self._panic_message = panic if isinstance(panic, str) else None
            elif suffix == protocol.STATE:
                self._output = protocol.output_state(body)
            elif suffix == protocol.VOLTAGE:
                self._voltage = protocol.number(body, "voltage")
            elif suffix == protocol.CURRENT:
                self._current = protocol.number(body, "current")
            elif suffix == protocol.MEASURE_VOLTAGE:
                self._measured_voltage = protocol.number(body, "voltage")
            elif suffix == protocol.MEASURE_CURRENT:
                self._measured_current = protocol.number(body, "current")
            elif suffix == protocol.MEASURE:
                voltage = protocol.number(body, "voltage")
                current = protocol.number(body, "current")
                self._measured_voltage, self._measured_current = voltage, current
            elif suffix == protocol.INFO:
                self._info = {k: v for k, v in body.items() if k != "pza_id"}
        except ValueError as err:
            # A message the server should never send: keep the last good value, and say so.
            log.warning("power supply %s: ignored a message on %s: %s", self.name, suffix, err)
