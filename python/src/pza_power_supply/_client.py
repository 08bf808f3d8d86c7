"""The connection to the broker: one paho-mqtt client shared by every power supply handle.

paho runs its network loop on its own thread (``loop_start``). That thread only updates the state
kept here and wakes the waiting callers; it never blocks. Callers (any number of threads) register
what they wait for under one condition variable *before* they publish, so a reply can never arrive
unseen.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import threading
import uuid
from typing import Any, Dict, Iterable, List, Optional, Set

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from . import _protocol as protocol
from ._errors import PzaError, Rejected, Timeout
from ._power_supply import PowerSupply

log = logging.getLogger("pza_power_supply")

# Long enough not to add traffic, short enough that a dead broker is noticed within a minute.
KEEPALIVE_S = 30
# Reconnection back-off bounds, as the server's own connections use.
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 5.0
# Commands and replies travel at QoS 1, as the server receives and publishes them.
QOS = 1


def _check_timeout(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{field} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{field} must be a finite number of seconds above 0, not {value}")
    return seconds


class _Pending:
    """One command waiting for its reply (on ``reply``) or its refusal (on ``P/error``)."""

    __slots__ = ("body", "done", "error", "name", "reply")

    def __init__(self, name: str, reply: str) -> None:
        self.name = name
        self.reply = reply
        self.done = threading.Event()
        self.body: Optional[Dict[str, Any]] = None
        self.error: Optional[str] = None


class Client:
    """One MQTT connection to the broker that pza-power-supply servers publish on.

    Connects at construction (raises ``PzaError`` if the broker cannot be reached or refuses the
    login, ``Timeout`` if it does not answer within ``timeout``) and disconnects on ``close()`` or
    at the end of a ``with`` block. Thread-safe: any number of threads may use the client and its
    power supply handles at once. ``TCP_NODELAY`` is set on the socket, so that a command is not
    held back by Nagle's algorithm (about 40 ms per round trip on loopback otherwise).

    ``namespace`` is the server's topic prefix (``broker.namespace`` in its config); ``timeout``
    (seconds) bounds every wait unless a call is given its own. ``tcp_nodelay=False`` exists only
    to measure what it saves.

    >>> with Client("127.0.0.1", 1883) as client:            # doctest: +SKIP
    ...     client.power_supply("emulator").set_voltage(5.0)
    5.0
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        namespace: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 5.0,
        *,
        client_id: Optional[str] = None,
        tcp_nodelay: bool = True,
    ) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty str, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an int between 1 and 65535, not {port!r}")
        self.host = host
        self.port = port
        self.namespace = protocol.check_namespace(namespace)
        self.timeout = _check_timeout("timeout", timeout)
        self.client_id = client_id or f"pza-py-{uuid.uuid4().hex[:12]}"
        self._tcp_nodelay = tcp_nodelay

        # Every id is unique across clients (the random part) and within this one (the counter).
        self._id_prefix = f"py-{uuid.uuid4().hex[:8]}-"
        self._ids = itertools.count(1)
        self._sync_topic = (
            f"{self.namespace}/pza-py/{self.client_id}/sync"
            if self.namespace
            else f"pza-py/{self.client_id}/sync"
        )

        self._cond = threading.Condition()
        self._pending: Dict[str, _Pending] = {}
        self._handles: Dict[str, PowerSupply] = {}
        self._present: Dict[str, Set[str]] = {}
        self._acks: Dict[int, Optional[str]] = {}
        self._synced: Set[str] = set()
        self._presence = False
        self._connect_mid: Optional[int] = None
        self._started = False
        self._connacked = False
        self._refused: Optional[str] = None
        self._closed = False
        # Serialize the (rare) creation of handles and of the presence subscription, so that a
        # second caller waits for the first one's subscription instead of racing past it.
        self._setup_lock = threading.Lock()

        self._mqtt = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        if username is not None:
            self._mqtt.username_pw_set(username, password)
        self._mqtt.on_socket_open = self._on_socket_open
        self._mqtt.on_connect = self._on_connect
        self._mqtt.on_disconnect = self._on_disconnect
        self._mqtt.on_subscribe = self._on_subscribe
        self._mqtt.on_message = self._on_message
        # paho annotates the delays as int, but computes them as floats (sleep, doubling, min).
        self._mqtt.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)  # type: ignore[arg-type]
        self._mqtt.connect_timeout = self.timeout
        self._connect()

    def _connect(self) -> None:
        where = f"{self.host}:{self.port}"
        try:
            self._mqtt.connect(self.host, self.port, keepalive=KEEPALIVE_S)
        except (socket.timeout, TimeoutError) as err:
            raise Timeout(f"the MQTT broker at {where} did not answer within {self.timeout:g} s") from err
        except OSError as err:
            raise PzaError(f"cannot connect to the MQTT broker at {where}: {err}") from err
        self._mqtt.loop_start()
        failure: Optional[str] = None
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (
                    self._refused is not None
                    or (self._connect_mid is not None and self._connect_mid in self._acks)
                ),
                self.timeout,
            )
            refused, mid = self._refused, self._connect_mid
            if ready and refused is None and mid is not None:
                failure = self._acks.pop(mid)
                self._started = True
        if refused is not None:
            self._shutdown()
            raise PzaError(f"the MQTT broker at {where} {refused}")
        if not ready:
            self._shutdown()
            raise Timeout(
                f"the MQTT broker at {where} did not accept the connection within {self.timeout:g} s"
            )
        if failure is not None:
            self._shutdown()
            raise PzaError(f"the MQTT broker at {where} refused a subscription: {failure}")

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnects. Calls still waiting raise ``PzaError``. Closing twice is harmless."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for pending in self._pending.values():
                pending.done.set()
            self._cond.notify_all()
        self._shutdown()

    def _shutdown(self) -> None:
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def __repr__(self) -> str:
        ns = f", namespace={self.namespace!r}" if self.namespace else ""
        return f"Client({self.host!r}, {self.port}{ns})"

    def list(self) -> List[str]:
        """The names of the power supplies seen on the broker (their retained status or info),
        sorted."""
        with self._setup_lock:
            self._check_open()
            if not self._presence:
                # Set first, so that a reconnection meanwhile subscribes to them too.
                with self._cond:
                    self._presence = True
                try:
                    self._subscribe(protocol.presence_filters(self.namespace))
                except BaseException:
                    with self._cond:
                        self._presence = False
                    raise
        self._sync()
        with self._cond:
            return sorted(self._present)

    def power_supply(self, name: str) -> PowerSupply:
        """The handle on power supply ``name`` (the same object for the same name).

        The first call for a name subscribes to its topics and waits until the retained state is
        in, so that ``status``, ``voltage``, ... are known at once for a running power supply. A
        name nobody serves still gives a handle: its commands raise ``Timeout``.
        """
        protocol.check_name(name)
        with self._setup_lock:
            self._check_open()
            with self._cond:
                handle = self._handles.get(name)
                if handle is not None:
                    return handle
                handle = PowerSupply(self, name)
                self._handles[name] = handle
            try:
                self._subscribe(protocol.subscriptions(self.namespace, name))
                self._sync()
            except BaseException:
                with self._cond:
                    del self._handles[name]
                raise
            return handle

    def _check_open(self) -> None:
        if self._closed:
            raise PzaError("the client is closed")

    def _wait_seconds(self, timeout: Optional[float]) -> float:
        return self.timeout if timeout is None else _check_timeout("timeout", timeout)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def _subscribe(self, filters: Iterable[str]) -> None:
        """Subscribes and waits for the broker's acknowledgement."""
        rc, mid = self._mqtt.subscribe([(f, QOS) for f in filters])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise PzaError(f"cannot subscribe: {mqtt.error_string(rc)}")
        with self._cond:
            acked = self._cond.wait_for(lambda: mid in self._acks or self._closed, self.timeout)
            self._check_open()
            if not acked:
                raise Timeout(f"the MQTT broker did not acknowledge a subscription within {self.timeout:g} s")
            failure = self._acks.pop(mid)
        if failure is not None:
            raise PzaError(f"the MQTT broker refused a subscription: {failure}")

    def _sync(self) -> None:
        """Returns once every message the broker queued for this client before now has arrived.

        The broker delivers a client's messages in order, so once a marker published now comes
        back, the retained messages of the subscriptions made before it are in.
        """
        token = self._new_id()
        self._publish(self._sync_topic, token.encode())
        with self._cond:
            arrived = self._cond.wait_for(lambda: token in self._synced or self._closed, self.timeout)
            self._check_open()
            if not arrived:
                raise Timeout(f"the MQTT broker did not route a message back within {self.timeout:g} s")
            self._synced.discard(token)

    def _publish(self, topic: str, payload: bytes) -> None:
        info = self._mqtt.publish(topic, payload, qos=QOS)
        # NO_CONN: paho keeps a QoS 1 message and sends it once reconnected; the wait for the
        # reply then decides.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise PzaError(f"cannot publish on {topic}: {mqtt.error_string(info.rc)}")

    def _request(
        self,
        name: str,
        command: str,
        reply: str,
        fields: Dict[str, str],
        timeout: Optional[float],
    ) -> Dict[str, Any]:
        """Sends ``command`` to power supply ``name`` and returns the body of its reply on
        ``reply``; raises ``Rejected`` for an answer on ``P/error``, ``Timeout`` for none."""
        seconds = self._wait_seconds(timeout)
        pza_id = self._new_id()
        pending = _Pending(name, reply)
        with self._cond:
            self._check_open()
            self._pending[pza_id] = pending
        try:
            self._publish(
                protocol.topic(self.namespace, name, command),
                protocol.encode_command(pza_id, fields),
            )
            answered = pending.done.wait(seconds)
        finally:
            with self._cond:
                self._pending.pop(pza_id, None)
        self._check_open()
        if not answered:
            raise Timeout(
                f"power supply {name}: no answer to {command} within {seconds:g} s "
                "(unknown or offline power supply, or the broker is unreachable)"
            )
        if pending.error is not None:
            raise Rejected(pending.error, name)
        assert pending.body is not None  # done is set only with a body or an error, or on close
        return pending.body

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._tcp_nodelay and getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _filters(self) -> List[str]:
        filters = [self._sync_topic]
        if self._presence:
            filters += protocol.presence_filters(self.namespace)
        for name in self._handles:
            filters += protocol.subscriptions(self.namespace, name)
        return filters

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.host, self.port, reason)
            with self._cond:
                if not self._started:
                    self._refused = f"refused the connection: {reason}"
                    self._cond.notify_all()
            return
        # A clean session forgets the subscriptions: make them again, on every (re)connection.
        with self._cond:
            filters = self._filters()
        _, mid = client.subscribe([(f, QOS) for f in filters])
        with self._cond:
            self._connect_mid = mid
            self._connacked = True
            self._cond.notify_all()
        if self._started:
            log.info("reconnected to the MQTT broker %s:%s", self.host, self.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._cond:
            if not self._started:
                # Some brokers (rumqttd) close the connection without a CONNACK on a bad login.
                if not self._connacked and self._refused is None:
                    self._refused = (
                        "refused the connection: it closed it before accepting it "
                        "(a wrong username or password?)"
                    )
                    self._cond.notify_all()
                return
        if not self._closed:
            log.warning("disconnected from the MQTT broker %s:%s: %s", self.host, self.port, reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failures = [str(r) for r in reasons if r.is_failure]
        with self._cond:
            # The resubscription after a reconnection has nobody waiting for it.
            if self._started and mid == self._connect_mid:
                if failures:
                    log.warning("the MQTT broker refused a subscription: %s", ", ".join(failures))
                return
            self._acks[mid] = ", ".join(failures) if failures else None
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._sync_topic:
            with self._cond:
                self._synced.add(message.payload.decode(errors="replace"))
                self._cond.notify_all()
            return
        parts = protocol.split_topic(self.namespace, message.topic)
        if parts is None:
            return
        name, suffix = parts
        body = protocol.decode(bytes(message.payload))
        with self._cond:
            if suffix in protocol.PRESENCE:
                self._note_presence(name, suffix, body is not None)
            if body is None:
                return
            handle = self._handles.get(name)
            # The handle's state first: a caller woken by the reply then reads the new value.
            if handle is not None:
                handle._apply(suffix, body)
            self._resolve(name, suffix, body)
            self._cond.notify_all()

    def _note_presence(self, name: str, suffix: str, present: bool) -> None:
        seen = self._present.setdefault(name, set())
        if present:
            seen.add(suffix)
        else:
            seen.discard(suffix)
            if not seen:
                del self._present[name]

    def _resolve(self, name: str, suffix: str, body: Dict[str, Any]) -> None:
        pza_id = protocol.pza_id(body)
        pending = self._pending.get(pza_id) if pza_id is not None else None
        if pending is None or pending.name != name:
            return
        if suffix == protocol.ERROR:
            message = body.get("message")
            pending.error = message if isinstance(message, str) else f"refused: {body}"
        elif suffix == pending.reply:
            pending.body = body
        else:
            return
        pending.done.set()
