"""The spatial memory: the static scene as an editable, versioned point cloud, rendered into scene videos and
searched for reference frames. Knows `engine.geometry` only: no model, no server.

- `pointcloud.SpatialMemory`: insertion from RGB-D frames, edits, deltas, save/load, PLY.
- `delta.MemoryDelta`: what changed between two versions.
- `render.render`: memory + cameras -> scene video, depth, coverage (PyTorch).
- `retrieval.retrieve`: reference-frame retrieval, "alg1" (the paper's) or "release" (the public code's).
"""

from engine.memory.delta import MemoryDelta
from engine.memory.pointcloud import DEFAULT_VOXEL_SIZE, MemoryFileError, SpatialMemory

__all__ = ["DEFAULT_VOXEL_SIZE", "MemoryDelta", "MemoryFileError", "SpatialMemory"]
