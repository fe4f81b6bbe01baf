"""The engine's network face: `protocol.py` (the messages, shared with the explorer) and the server that drives
the pipeline for connected viewers. It knows nothing of pixels on a screen."""
