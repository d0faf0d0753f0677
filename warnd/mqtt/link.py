"""The MQTT connection: one long-lived broker link with subscriptions that survive reconnects.

The daemon has one for its devices (loudspeakers, LED boards: `device_link`), the CAP feeds one
of their own (warnd.feeds.mqtt), and each simulated device one (warnd.tools.simulator).

The link owns reconnection: `run_loop` keeps `async with client:` inside `while True`, waits a
randomised, capped delay after each failure, and re-makes every subscription on each connect.
Channels never wait for the broker: `publish` raises NotReadyError while the link is down, so
their deliveries stay in the outbox, no attempt counted, until it is back.

With `manual_ack` (the daemon's device link) a QoS-1 message is acknowledged to the broker (its
PUBACK) only when its handler says it is done — the device hub, once the ack is committed to the
store. Until then the broker keeps it in warnd's persistent session: if warnd dies or cannot
write, the broker delivers it again on the next connect. An acknowledgement belongs to the
connection the message came on; after a reconnect the broker resends what was not acknowledged,
so an old one is dropped rather than sent for a message id the new connection may reuse.

Sharing: the composition root (warnd.app) makes the device link once and lends it to every
channel as `AdapterContext.mqtt`; a channel calls `link.subscribe(topic_filter, handler)` and returns
`link.background()` from its own `background()` — the link's loops are handed out only once.
Topics, QoS and retain come from warnd.mqtt.topics.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt
import structlog

from warnd.errors import NotReadyError, TransientError
from warnd.mqtt.topics import QOS, filter_pattern

if TYPE_CHECKING:
    from warnd.config import MqttSettings

log = structlog.get_logger("warnd.mqtt")

Handler = Callable[[aiomqtt.Message], Awaitable[None] | None]
# What acknowledges one received message later: (connection number, message id, QoS).
AckToken = tuple[int, int, int]

# paho's default of 20 messages in flight throttles a fan-out of thousands to one round trip
# per 20; 1,000 keeps a county-wide warning to a few round trips and within Mosquitto's queue.
MAX_INFLIGHT = 1000
# A publish not acknowledged by the broker within this time is retried by the dispatcher.
PUBLISH_TIMEOUT_S = 10.0
# MQTT's PUBACK control packet type (its fixed header's first byte), as paho's ack sends it.
PUBACK = 0x40
# What paho may be handed from the broker's socket per reader callback (ReadBuffer): it handles
# every packet in it before the event loop runs again, so this bounds a stall. 4 KiB is ~30
# device acks (~2 ms) or, in a fan-out, up to 1,000 PUBACKs of warnd's publishes (a PUBACK costs
# paho and aiomqtt 20-80 µs). 1 KiB and 16 KiB were tried: no clear difference in CPU per ack
# on the shared VM (111-140 µs), and 16 KiB let 4,000 PUBACKs through at once.
READ_BYTES = 4 * 1024


class ReadBuffer:
    """paho's socket, read a buffer at a time, and at most READ_BYTES per reader callback.

    paho reads each packet with one `recv` per byte of its fixed header and one for the rest
    (four syscalls for a device ack), and aiomqtt's reader callback reads one packet per call
    when nothing of warnd's is in flight, or up to one per message in flight (1,000 in a
    fan-out) for as long as the socket has data. Here paho's `recv`s are served from reads of
    up to READ_BYTES, and aiomqtt's callback drains what was read through `pending()` (its hook
    for TLS sockets, paho issue 131). Once READ_BYTES were read in one callback, the next `recv`
    raises BlockingIOError (paho keeps the partial packet and reports "again"): the callback
    ends, the loop runs, and the socket's level-triggered readiness brings it back for the
    rest; until then it reads on while the socket has data. A TLS socket's decrypted bytes are
    read regardless, as no readiness would announce them (so over TLS one record, ≤ 16 KiB,
    more). paho documents a socket-like object as recv/send/close/fileno/setblocking (its
    websocket wrapper is one); the rest passes through.
    """

    def __init__(self, sock: Any) -> None:
        """Wrap a connected socket (plain or TLS)."""
        self._sock = sock
        self._buffer = memoryview(b"")
        self._taken = 0  # bytes read from the socket in this reader callback
        self._dry = False  # whether the socket had nothing more in this reader callback
        self._tls_pending = getattr(sock, "pending", None)

    def recv(self, size: int) -> bytes:
        """Up to `size` bytes: from the buffer, else from the socket while this callback may read."""
        if not self._buffer:
            room = READ_BYTES - self._taken
            if room <= 0:
                room = self._tls_waiting()
                if not room:
                    raise BlockingIOError  # the rest once the loop has run
            try:
                data = self._sock.recv(room)  # EOF as paho expects
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self._dry = True  # paho turns these into "again"
                raise
            self._taken += len(data)
            if len(data) <= size:
                return data
            self._buffer = memoryview(data)
        chunk, self._buffer = self._buffer[:size], self._buffer[size:]
        return chunk.tobytes()

    def pending(self) -> int:
        """Whether paho should read on (> 0) before the loop runs again; 0 ends aiomqtt's reader callback.

        Bytes read but not handed to paho, or decrypted by TLS, are there; the socket may have
        more while this callback's READ_BYTES are not used up (a TLS read returns one record,
        often one packet) and it has not yet said it has none.
        """
        left = len(self._buffer) + self._tls_waiting()
        if left:
            return left
        if self._taken < READ_BYTES and not self._dry:
            return 1
        self._taken, self._dry = 0, False
        return 0

    def _tls_waiting(self) -> int:
        """Decrypted bytes the TLS socket holds (the file descriptor does not show them)."""
        return self._tls_pending() if self._tls_pending is not None else 0

    def __getattr__(self, name: str) -> Any:
        """send, close, fileno, setblocking … of the socket itself."""
        return getattr(self._sock, name)


def parse_url(url: str) -> tuple[str, int, bool]:
    """Host, port and whether TLS is used, from mqtt://host[:1883] or mqtts://host[:8883]."""
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    return parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), tls


def backoff_s(attempt: int, cap_s: float) -> float:
    """Randomised reconnect delay (aiomqtt's own formula), capped: a thousand terminals never stampede."""
    return random.uniform(0, min(cap_s, 1.5 ** min(10, attempt)))


class MqttLink:
    """A broker connection with subscriptions that survive reconnects.

    Args:
        settings: the `[mqtt]` section (url, username, password, ca_file, client_id, keepalive_s).
        client_id: overrides `settings.client_id` (the speaker simulator uses device ids).
        will: the last will the broker publishes if this connection dies.
        clean_session: False keeps a persistent session, so the broker holds QoS-1 messages
            that arrive while this client is away.
        on_connect: called (awaited) after each connect and resubscribe, e.g. to publish status.
        name: for log events and the loop's task name.
        manual_ack: acknowledge a QoS-1 message to the broker only when its handler is done with it.
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str | None = None,
        will: aiomqtt.Will | None = None,
        clean_session: bool = False,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        name: str = "warnd.mqtt",
        manual_ack: bool = False,
    ) -> None:
        """Remember how to connect; `run_loop` connects."""
        self.settings = settings
        self.client_id = client_id or settings.client_id
        self.will = will
        self.clean_session = clean_session
        self.on_connect = on_connect
        self.name = name
        self.manual_ack = manual_ack
        self.connects = 0
        # Moves on at every disconnect: an acknowledgement is only sent on the connection it is for.
        self._connection = 0
        self._handlers: list[tuple[str, Handler]] = []
        # (filter as a pattern, handler, whether it is a coroutine function, whether it acks itself).
        self._routes: list[tuple[re.Pattern[str], Handler, bool, bool]] = []
        # Tokens of queued messages whose coroutine handlers have not run yet, by id(message).
        self._waiting_ack: dict[int, AckToken] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._claimed = False
        self._loops: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._connected.is_set()

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected (tests, tools); TimeoutError otherwise."""
        async with asyncio.timeout(timeout_s):
            await self._connected.wait()

    def subscribe(self, topic_filter: str, handler: Handler, *, acks: bool = False) -> None:
        """Call handler for every message matching topic_filter, from now on and after every reconnect.

        With `acks`, a plain handler acknowledges each message itself (`link.ack(link.token(m))`)
        once it is safe; otherwise the link does when the handlers have run.
        """
        known = any(f == topic_filter for f, _ in self._handlers)
        self._handlers.append((topic_filter, handler))
        levels = topic_filter.split("/")
        if levels[0] == "$share":
            levels = levels[2:]  # $share/<group>/<filter>: messages arrive on the plain topic
        self._routes.append((filter_pattern(levels), handler, inspect.iscoroutinefunction(handler), acks))
        if self._client is not None and self.connected and not known:
            task = asyncio.get_running_loop().create_task(self._subscribe(self._client, topic_filter))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def add_loop(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A loop that runs beside the connection (e.g. acknowledgement processing), started once."""
        self._loops.append((name, factory))

    def background(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The link's loops, handed out once however many channels share the link."""
        if self._claimed:
            return []
        self._claimed = True
        return [(self.name, self.run_loop()), *((n, f()) for n, f in self._loops)]

    def token(self, message: aiomqtt.Message) -> AckToken | None:
        """What acknowledges this message later (None: nothing to acknowledge); take it on arrival."""
        if not self.manual_ack or message.qos == 0:
            return None
        return (self._connection, message.mid, message.qos)

    def ack(self, token: AckToken | None) -> None:
        """Send the broker its PUBACK for a message, if its connection is still the one up.

        A message received on an earlier connection is not acknowledged: the broker sends it
        again on the new one, where it gets its own token.
        """
        client = self._client
        # Not `connected`: messages come right after CONNACK, before the subscriptions are remade.
        if token is None or client is None or token[0] != self._connection:
            return
        # paho's own call, which aiomqtt does not wrap; made from the event loop, as aiomqtt's are.
        client._client.ack(token[1], token[2])

    def ack_many(self, tokens: list[AckToken | None]) -> None:
        """Acknowledge many messages at once: their PUBACKs in one write, not one syscall each.

        paho writes each queued packet with its own `send()`: a batch of 1,000 stored acks was
        1,000 syscalls and as many trips through paho's write path. PUBACK is four fixed bytes
        (type, length 2, message id), so the batch's are joined into one packet for paho to
        write; QoS 2 (PUBCOMP, which warnd does not subscribe with) goes the one-by-one way.
        """
        client = self._client
        if client is None:
            return
        mids = bytearray()
        for token in tokens:
            if token is None or token[0] != self._connection:
                continue
            if token[2] == 1:
                mids += PUBACK.to_bytes(1, "big") + b"\x02" + token[1].to_bytes(2, "big")
            else:
                self.ack(token)
        if mids:
            # paho's queue of outgoing packets, which aiomqtt's writer callback drains.
            client._client._packet_queue(PUBACK, bytes(mids), 0, 0)

    async def publish(self, topic: str, payload: bytes | str, qos: int = QOS, retain: bool = False) -> None:
        """Publish and wait for the broker's PUBACK; NotReadyError while the broker is unreachable."""
        client = self._client
        if client is None or not self.connected:
            raise NotReadyError("broker unavailable")
        before = _cancels()
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            _raise_if_cancelled_since(before)
            raise TransientError(f"broker: {exc}") from None
        _raise_if_cancelled_since(before)

    def _client_for(self) -> aiomqtt.Client:
        """The aiomqtt client, made once: reusing it lets paho resend unacknowledged QoS-1 messages."""
        host, port, tls = parse_url(self.settings.url)
        context = None
        if tls:
            ca = str(self.settings.ca_file) if self.settings.ca_file else None
            context = ssl.create_default_context(cafile=ca)
        client = aiomqtt.Client(
            host,
            port,
            username=self.settings.username,
            password=self.settings.password,
            identifier=self.client_id,
            clean_session=self.clean_session,
            keepalive=self.settings.keepalive_s,
            will=self.will,
            tls_context=context,
            max_inflight_messages=MAX_INFLIGHT,
            timeout=PUBLISH_TIMEOUT_S,
            queue_type=self._inbox_type(),
        )
        # aiomqtt warns on every publish beyond 10 pending; a fan-out has thousands on purpose.
        client.pending_calls_threshold = MAX_INFLIGHT * 10
        if self.manual_ack:
            # aiomqtt 2.5 has no manual acknowledgement of its own; its paho client does.
            client._client.manual_ack_set(True)
        buffer_reads(client._client)
        return client

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        """One QoS-1 subscription; a failure shows up as a disconnect in the run loop."""
        before = _cancels()
        try:
            await client.subscribe(topic_filter, qos=QOS)
        except aiomqtt.MqttError as exc:
            log.warning("mqtt.subscribe_failed", link=self.name, topic=topic_filter, reason=str(exc))
        _raise_if_cancelled_since(before)

    async def run_loop(self) -> None:
        """Connect, subscribe, dispatch messages; on any broker error wait a capped random delay, again."""
        client = self._client_for()
        # Made once and kept: `publish` still checks `connected` before using it.
        self._client = client
        attempt = 0
        # Connecting, subscribing and disconnecting all wait for the broker's reply the same way.
        before = _cancels()
        while True:
            try:
                async with client:
                    _raise_if_cancelled_since(before)
                    for topic_filter in dict.fromkeys(f for f, _ in self._handlers):
                        await client.subscribe(topic_filter, qos=QOS)
                        _raise_if_cancelled_since(before)
                    self._client = client
                    self._connected.set()
                    self.connects += 1
                    self._last_error = None
                    log.info(
                        "mqtt.connected", link=self.name, url=self.settings.url, client_id=self.client_id
                    )
                    if self.on_connect is not None:
                        await self.on_connect()
                        _raise_if_cancelled_since(before)
                    attempt = 0  # only now: a connect whose on_connect keeps failing backs off
                    async for message in client.messages:
                        await self._dispatch(message)
                        _raise_if_cancelled_since(before)
            except (aiomqtt.MqttError, TransientError) as exc:  # TransientError: on_connect's publish
                _raise_if_cancelled_since(before)
                was_connected = self.connected
                self._connected.clear()
                self._connection += 1
                attempt += 1
                delay = backoff_s(attempt, self.settings.reconnect_max_s)
                reason = str(exc)
                # One warning per change of error: a broker down for an hour is not a log flood.
                emit = log.warning if (was_connected or reason != self._last_error) else log.info
                self._last_error = reason
                emit(
                    "mqtt.disconnected" if was_connected else "mqtt.connect_failed",
                    link=self.name,
                    reason=reason,
                    retry_in_s=round(delay, 2),
                )
                await asyncio.sleep(delay)
            finally:
                if self.connected:
                    self._connection += 1
                self._connected.clear()

    def _inbox_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        """aiomqtt's incoming queue (its `queue_type`), with plain handlers called on arrival.

        aiomqtt's message iterator makes a task and an `asyncio.wait` per message; 10,000
        speakers acking at once made that a tenth of warnd's CPU. Plain (non-async) handlers,
        such as the device hub's, only queue the message for their own loop, so they are called
        as the message arrives; messages for coroutine handlers (CAP feeds, handled in order)
        still go through the queue to `run_loop`.
        """
        link = self

        class Inbox(asyncio.Queue[aiomqtt.Message]):
            def put_nowait(self, item: aiomqtt.Message) -> None:
                if link._deliver_now(item):
                    super().put_nowait(item)

        return Inbox

    def _matching(self, message: aiomqtt.Message) -> list[tuple[Handler, bool, bool]]:
        """The handlers whose filter matches the message's topic."""
        topic = message.topic.value
        return [(h, is_async, acks) for p, h, is_async, acks in self._routes if p.fullmatch(topic)]

    def _deliver_now(self, message: aiomqtt.Message) -> bool:
        """Call the plain handlers of a message; True if coroutine handlers are still to run.

        With manual acknowledgement, a message no handler acknowledges itself is acknowledged
        here, or after its coroutine handlers (`_dispatch`): one nobody wants must not stay
        unacknowledged, holding a place in the broker's window of messages in flight.
        """
        pending = False
        handled = False
        token = self.token(message)
        for handler, is_async, acks in self._matching(message):
            handled = handled or acks
            if is_async:
                pending = True
                continue
            try:
                result = handler(message)
                # A plain callable that returned a coroutine (None, the usual, skips the check).
                if result is not None and inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except Exception:
                log.exception("mqtt.handler_failed", link=self.name, topic=str(message.topic))
        if token is not None and not handled:
            if pending:
                self._waiting_ack[id(message)] = token
            else:
                self.ack(token)
        return pending

    async def _dispatch(self, message: aiomqtt.Message) -> None:
        """Run, in order, the coroutine handlers whose filter matches a queued message."""
        token = self._waiting_ack.pop(id(message), None)
        failed = False
        for handler, is_async, _ in self._matching(message):
            if not is_async:
                continue  # already called on arrival
            try:
                result = handler(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                failed = True
                log.exception("mqtt.handler_failed", link=self.name, topic=str(message.topic))
        if not failed:
            # A handler that failed (a store that cannot write) leaves it to the broker to resend.
            self.ack(token)


def buffer_reads(paho: Any) -> None:
    """Give paho each new socket wrapped in a ReadBuffer, before aiomqtt starts reading it.

    MqttLink does it for its client; the benchmarks' bare references do it for theirs, so they
    receive as warnd does. paho calls `on_socket_open` (aiomqtt's: add the reader callback)
    right after it made the socket its own and before the CONNECT is sent, on the thread that
    connects.
    """
    opened = paho.on_socket_open

    def on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
        wrapped = ReadBuffer(sock)
        client._sock = wrapped
        opened(client, userdata, wrapped)

    paho.on_socket_open = on_socket_open


def _cancels() -> int:
    """Cancellation requests of the current task not yet taken back (`Task.cancelling()`)."""
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def _raise_if_cancelled_since(before: int) -> None:
    """Raise a cancellation requested since `before` that aiomqtt's wait for the broker swallowed.

    Python 3.11's `asyncio.wait_for`, which aiomqtt awaits CONNACK, SUBACK, PUBACK and the
    disconnect with, returns the reply instead of raising when the task is cancelled just as the
    reply arrives. The task then runs on as if never cancelled: a stopping daemon or simulator
    waits for it forever. The request is still counted by `Task.cancelling()`; comparing with
    the count from before the wait leaves alone a cancel that was caught and kept on purpose.
    """
    if _cancels() > before:
        raise asyncio.CancelledError


def device_link(
    settings: MqttSettings, *, on_connect: Callable[[], Awaitable[None]] | None = None
) -> MqttLink:
    """The daemon's link to its devices: `[mqtt] client_id`, persistent session, manual acknowledgement.

    Acks from devices are acknowledged to the broker only once stored (warnd.mqtt.devices).
    """
    return MqttLink(settings, on_connect=on_connect, manual_ack=True)
