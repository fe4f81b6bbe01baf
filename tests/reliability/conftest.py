"""Fixtures of the reliability tests (the helpers live in helpers.py)."""

import pytest
import zmq


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()
