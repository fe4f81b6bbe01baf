"""The procedural world: seeded scenes, their ground-truth renderer, camera paths and the on-disk dataset.

Training, evaluation and the demo draw from here; the live pipeline does not depend on it. Importing the
package is cheap: OpenGL is only touched when a `WorldRenderer` is created, torch only by the Dataset classes.
"""

from engine.world.paths import (
    CLOSED_KINDS,
    PATH_KINDS,
    CameraPath,
    PathConfig,
    PathError,
    forward_back_path,
    look_around_path,
    loop_path,
    make_path,
    orbit_path,
    path_is_free,
    return_walk_path,
    walk_path,
)
from engine.world.render import RenderOutput, WorldRenderer, shared_renderer
from engine.world.scene import Motion, Primitive, Scene, SceneConfig, generate_scene
from engine.world.textures import Material, Texture

__all__ = [
    "CLOSED_KINDS", "PATH_KINDS", "CameraPath", "Material", "Motion", "PathConfig", "PathError", "Primitive",
    "RenderOutput", "Scene", "SceneConfig", "Texture", "WorldRenderer", "forward_back_path", "generate_scene",
    "look_around_path", "loop_path", "make_path", "orbit_path", "path_is_free", "return_walk_path", "shared_renderer",
    "walk_path",
]
