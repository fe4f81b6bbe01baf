"""How a generation server meets its clients: bound directly (ROUTER), or as one worker behind the broker (DEALER).

Both transports give the server the same view, `(client_id, frames)` in and out, so the server code does not know
whether it serves clients itself or through `broker.py`. Worker-to-broker control frames:

    [b"READY"]                         a worker announces itself (sent on connect)
    [b"HB"]                            a worker's heartbeat (liveness for the broker)
    [b"MSG", client_id, *frames]       a message for one client
The broker forwards a client's message to its worker as [client_id, *frames].
"""

from __future__ import annotations

import time

import zmq

from engine.server.security import ServerSecurity

READY, HEARTBEAT, MESSAGE = b"READY", b"HB", b"MSG"
HEARTBEAT_INTERVAL_S = 1.0
SEND_HWM = 512  # messages queued per client; beyond, new ones are dropped (a slow reader loses frames, not memory)


class RouterTransport:
    """A ROUTER socket bound at `address`; each DEALER client is one identity."""

    def __init__(self, context: zmq.Context, address: str, keys_dir=None, max_message_bytes: int | None = None,
                 send_hwm: int = SEND_HWM):
        self.security = ServerSecurity(context, keys_dir)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, send_hwm)  # before bind: accepted connections keep the options of bind time
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client's replies are dropped, not raised
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting with its identity takes over at once
        if max_message_bytes:
            self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.security.prepare(self.socket, address)
        self.socket.bind(address)
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self) -> tuple[bytes, list[zmq.Frame]]:
        frames = self.socket.recv_multipart(copy=False)
        return frames[0].bytes, frames[1:]

    def send(self, client_id: bytes, frames: list) -> None:
        self.socket.send_multipart([client_id, *frames], copy=False)

    def tick(self) -> None:
        """Periodic duties (none for a directly bound server)."""

    def close(self) -> None:
        self.socket.close(0)
        self.security.close()


class WorkerTransport:
    """A DEALER connected to the broker's backend; the broker prepends the client id to what it forwards."""

    def __init__(self, context: zmq.Context, broker_backend: str, worker_name: str):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IDENTITY, worker_name.encode())
        self.socket.connect(broker_backend)
        self.socket.send(READY)
        self._last_heartbeat = time.monotonic()

    def recv(self) -> tuple[bytes, list[zmq.Frame]]:
        frames = self.socket.recv_multipart(copy=False)
        return frames[0].bytes, frames[1:]

    def send(self, client_id: bytes, frames: list) -> None:
        self.socket.send_multipart([MESSAGE, client_id, *frames], copy=False)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self.socket.send(HEARTBEAT)
            self._last_heartbeat = now

    def close(self) -> None:
        self.socket.close(0)
