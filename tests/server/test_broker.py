"""The broker routes each client to one worker and keeps it there; CURVE and loopback rules hold."""

import threading
import time

import pytest
import zmq

from engine.server.broker import Broker
from engine.server.security import SecurityError, is_loopback, make_keys, secure_client
from engine.server.transport import RouterTransport, WorkerTransport


def echo_worker(context, backend, name, stop):
    """A real worker transport that answers every message with its own name (to observe routing)."""
    t = WorkerTransport(context, backend, name)
    poller = zmq.Poller()
    poller.register(t.socket, zmq.POLLIN)
    while not stop.is_set():
        t.tick()
        if poller.poll(50):
            client, frames = t.recv()
            t.send(client, [name.encode(), *frames])
    t.close()


@pytest.fixture
def broker_with_two_workers():
    ctx = zmq.Context()
    broker = Broker(ctx, "tcp://127.0.0.1:*", "inproc://workers", worker_timeout_s=5)
    stop = threading.Event()
    threads = [threading.Thread(target=broker.run, daemon=True)]
    threads += [threading.Thread(target=echo_worker, args=(ctx, "inproc://workers", f"w{i}", stop), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(broker.workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    yield ctx, broker
    stop.set()
    broker.stop_event.set()
    for t in threads:
        t.join(2)
    broker.close()
    ctx.term()


def client(ctx, address):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 3000)
    s.connect(address)
    return s


def test_sessions_are_sticky_and_balanced(broker_with_two_workers):
    ctx, broker = broker_with_two_workers
    clients = [client(ctx, broker.frontend_address) for _ in range(4)]
    seen = {}
    for round_ in range(3):
        for i, c in enumerate(clients):
            c.send_multipart([b"ping", str(round_).encode()])
            worker, *payload = c.recv_multipart()
            assert payload == [b"ping", str(round_).encode()]
            assert seen.setdefault(i, worker) == worker  # sticky
    assert sorted(seen.values()) == [b"w0", b"w0", b"w1", b"w1"]  # balanced
    for c in clients:
        c.close(0)


def test_loopback_detection():
    assert is_loopback("tcp://127.0.0.1:5555") and is_loopback("tcp://localhost:1") and is_loopback("tcp://[::1]:5")
    assert is_loopback("ipc:///tmp/x") and is_loopback("inproc://a")
    assert not is_loopback("tcp://0.0.0.0:5555") and not is_loopback("tcp://*:5555") and not is_loopback("tcp://10.1.2.3:1")


def test_public_bind_without_keys_is_refused():
    ctx = zmq.Context()
    with pytest.raises(SecurityError, match="needs CURVE keys"):
        RouterTransport(ctx, "tcp://0.0.0.0:0")
    ctx.term()


def test_curve_client_without_key_is_refused(tmp_path):
    keys = make_keys(tmp_path / "keys")
    other = make_keys(tmp_path / "other")  # a client whose key the server never authorised
    ctx = zmq.Context()
    server = RouterTransport(ctx, "tcp://127.0.0.1:*", keys_dir=keys.root)

    good, bad = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (good, bad):
        s.setsockopt(zmq.LINGER, 0)
    secure_client(good, keys.root)
    bad.curve_secretkey, bad.curve_publickey = zmq.auth.load_certificate(other.client_secret)[::-1]
    bad.curve_serverkey = zmq.auth.load_certificate(keys.server_public)[0]
    good.connect(server.address)
    bad.connect(server.address)
    bad.send(b"from-bad")
    good.send(b"from-good")
    poller = zmq.Poller()
    poller.register(server.socket, zmq.POLLIN)
    got = []
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if poller.poll(100):
            got.append(server.recv()[1][0].bytes)
    assert got == [b"from-good"]
    for s in (good, bad):
        s.close(0)
    server.close()
    ctx.term()


def test_keys_are_not_overwritten_by_accident(tmp_path):
    make_keys(tmp_path)
    with pytest.raises(SecurityError, match="exists"):
        make_keys(tmp_path)


def test_workers_get_every_serve_option_but_the_brokers_own():
    """A broker starts its workers with its own command line: an option added to `spatia serve` must reach them."""
    import argparse

    from engine.server.cli import BROKER_ONLY, add_arguments, worker_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = parser.parse_args(["--model", "m", "--workers", "2", "--bind", "tcp://0.0.0.0:1", "--keys", "k",
                               "--control-encoder", "vae", "--dtype", "bfloat16", "--no-short-chunks", "--resume",
                               "--short-chunk-steps", "2", "--short-chunk-refs", "retrieve", "--device", "cpu"])
    worker = parser.parse_args(worker_options(given))
    for name, value in vars(given).items():
        if name not in BROKER_ONLY:
            assert getattr(worker, name) == value, name
    assert worker.workers == 1 and worker.keys is None  # the broker's own options stay with it
    assert "--device" not in worker_options(parser.parse_args([]))  # unset options are left unset
