"""Scale-out: one public ROUTER for clients in front of N generation workers, sessions sticky to their worker.

ZeroMQ's load-balancing broker pattern with affinity: a client's first message goes to the live worker holding the
fewest clients, and every later message of that client goes to the same worker (its session and memory live there).
A worker that misses heartbeats for `worker_timeout_s` is dropped; its clients are re-assigned on their next message,
and the new worker resumes their sessions from the shared autosave directory.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from engine.server.security import ServerSecurity
from engine.server.transport import HEARTBEAT, MESSAGE, READY, SEND_HWM


@dataclass
class WorkerInfo:
    name: bytes
    last_seen: float
    clients: set[bytes] = field(default_factory=set)


class Broker:
    def __init__(
        self,
        context: zmq.Context,
        frontend: str,
        backend: str,
        keys_dir=None,
        worker_timeout_s: float = 10.0,
        max_message_bytes: int | None = None,
    ):
        self.context = context
        self.security = ServerSecurity(context, keys_dir)
        self.front = context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.SNDHWM, SEND_HWM)  # before bind, as RouterTransport: a slow client loses frames
        self.front.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a client reconnecting with its identity takes over at once
        if max_message_bytes:
            self.front.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.security.prepare(self.front, frontend)
        self.front.bind(frontend)
        self.back = context.socket(zmq.ROUTER)
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.bind(backend)  # ipc:// or loopback: workers are local processes
        self.frontend_address = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_address = self.back.getsockopt_string(zmq.LAST_ENDPOINT)
        self.worker_timeout_s = worker_timeout_s
        self.workers: dict[bytes, WorkerInfo] = {}
        self.assignment: dict[bytes, bytes] = {}  # client id -> worker name
        # messages that arrived while no worker was alive (start-up, all workers restarting); bounded, oldest dropped
        self.waiting: deque[list] = deque(maxlen=1024)
        self.stop_event = threading.Event()

    # ------------------------------------------------------------------ routing
    def _worker_for(self, client: bytes) -> bytes | None:
        name = self.assignment.get(client)
        if name in self.workers:
            return name
        if not self.workers:
            return None
        name = min(self.workers.values(), key=lambda w: (len(w.clients), w.name)).name
        self.assignment[client] = name
        self.workers[name].clients.add(client)
        return name

    def _from_worker(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return
        name, kind = frames[0].bytes, frames[1].bytes
        info = self.workers.get(name)
        if info is None:
            info = self.workers[name] = WorkerInfo(name, time.monotonic())
            while self.waiting:
                self._from_client(self.waiting.popleft())
        info.last_seen = time.monotonic()
        if kind == MESSAGE and len(frames) >= 3:
            self.front.send_multipart(frames[2:], copy=False)
        elif kind not in (READY, HEARTBEAT):
            pass  # unknown control frame from a local worker: ignore rather than crash the broker

    def _from_client(self, frames: list[zmq.Frame]) -> None:
        worker = self._worker_for(frames[0].bytes)
        if worker is None:
            self.waiting.append(frames)  # delivered when a worker announces itself
            return
        self.back.send_multipart([worker, *frames], copy=False)

    def _expire_workers(self) -> None:
        now = time.monotonic()
        for name, info in list(self.workers.items()):
            if now - info.last_seen > self.worker_timeout_s:
                del self.workers[name]
                for client in info.clients:
                    self.assignment.pop(client, None)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while not self.stop_event.is_set():
            events = dict(poller.poll(200))
            if self.back in events:
                self._from_worker(self.back.recv_multipart(copy=False))
            if self.front in events:
                self._from_client(self.front.recv_multipart(copy=False))
            self._expire_workers()

    def close(self) -> None:
        self.front.close(0)
        self.back.close(0)
        self.security.close()
