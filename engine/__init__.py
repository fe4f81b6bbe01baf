"""Spatia Explorer's generation engine: geometry, spatial memory, world model, pipeline and server.

`import engine` is cheap and works on any CPU-only machine: heavy or optional backends (TensorRT, SAM2,
MapAnything, RoMa) are imported only by the factories that need them.
"""

__version__ = "0.1.0"
