"""Who may talk to a generation server: loopback by default, CURVE keys for anything else.

A server binds to loopback unless told otherwise. A non-loopback bind is refused unless CURVE is configured: the
server's secret certificate plus a directory of authorised client public certificates (pyzmq's `zmq.auth`).
`spatia keys DIR` makes a server pair and a client pair in the layout this module reads:

    DIR/server.key, DIR/server.key_secret     the server's certificate (public / secret)
    DIR/client.key, DIR/client.key_secret     one client's certificate
    DIR/authorized/                           public certificates of every client allowed in (client.key is copied here)
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator


class SecurityError(RuntimeError):
    """A bind or connect that the security policy forbids, or unusable key material."""


def is_loopback(address: str) -> bool:
    """True for ipc://, inproc:// and tcp:// endpoints on 127.0.0.0/8, ::1 or localhost."""
    scheme = address.split("://", 1)[0]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface name or a host name: not provably local
        return False


@dataclass(frozen=True)
class KeyPaths:
    root: Path

    @property
    def server_public(self) -> Path:
        return self.root / "server.key"

    @property
    def server_secret(self) -> Path:
        return self.root / "server.key_secret"

    @property
    def client_public(self) -> Path:
        return self.root / "client.key"

    @property
    def client_secret(self) -> Path:
        return self.root / "client.key_secret"

    @property
    def authorized(self) -> Path:
        return self.root / "authorized"


def make_keys(directory: str | Path, overwrite: bool = False) -> KeyPaths:
    """Create the server and one client certificate pair, and authorise that client."""
    paths = KeyPaths(Path(directory))
    if paths.server_secret.exists() and not overwrite:
        raise SecurityError(f"{paths.server_secret} exists; pass overwrite=True (--force) to replace the keys")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.authorized.mkdir(exist_ok=True)
    zmq.auth.create_certificates(paths.root, "server")
    zmq.auth.create_certificates(paths.root, "client")
    shutil.copy(paths.client_public, paths.authorized / "client.key")
    for secret in (paths.server_secret, paths.client_secret):
        secret.chmod(0o600)
    return paths


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise SecurityError(f"missing key file {path} (make keys with `spatia keys DIR`)")
    public, secret_key = zmq.auth.load_certificate(path)
    if secret and secret_key is None:
        raise SecurityError(f"{path} holds no secret key")
    return public, secret_key


class ServerSecurity:
    """Applies the policy to a server socket before it binds; keeps the authenticator thread alive."""

    def __init__(self, context: zmq.Context, keys_dir: str | Path | None):
        self.context = context
        self.keys = KeyPaths(Path(keys_dir)) if keys_dir else None
        self.authenticator: ThreadAuthenticator | None = None

    def prepare(self, socket: zmq.Socket, address: str) -> None:
        if self.keys is None:
            if not is_loopback(address):
                raise SecurityError(
                    f"refusing to bind {address}: a non-loopback bind needs CURVE keys "
                    "(make them with `spatia keys DIR`, then pass --keys DIR)"
                )
            return
        if not self.keys.authorized.is_dir():
            raise SecurityError(f"missing directory of authorised client keys {self.keys.authorized}")
        public, secret = _load(self.keys.server_secret, secret=True)
        if self.authenticator is None:
            self.authenticator = ThreadAuthenticator(self.context)
            self.authenticator.start()
            self.authenticator.configure_curve(domain="*", location=str(self.keys.authorized))
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_server = True

    def close(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


def secure_client(socket: zmq.Socket, keys_dir: str | Path) -> None:
    """Give a client socket its CURVE identity and the server's public key, before it connects."""
    keys = KeyPaths(Path(keys_dir))
    public, secret = _load(keys.client_secret, secret=True)
    server_public, _ = _load(keys.server_public, secret=False)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = server_public
