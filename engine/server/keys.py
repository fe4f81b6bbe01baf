"""`spatia keys DIR`: make CURVE certificates for a server that listens beyond loopback (see security.py)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="where to write server.key(_secret), client.key(_secret) and authorized/")
    parser.add_argument("--force", action="store_true", help="replace existing keys")


def run(args: argparse.Namespace) -> int:
    from engine.server.security import SecurityError, make_keys

    try:
        paths = make_keys(args.directory, overwrite=args.force)
    except SecurityError as e:
        print(f"error: {e}")
        return 2
    print(f"server keys: {paths.server_public} (give to clients), {paths.server_secret} (keep on the server)")
    print(f"client keys: {paths.client_public}, {paths.client_secret}; authorised in {paths.authorized}/")
    print(f"serve with: spatia serve --bind tcp://0.0.0.0:5555 --keys {paths.root}")
    return 0
