"""Spatia Explorer's desktop viewer: it talks to the engine only through `engine.server.protocol`."""
