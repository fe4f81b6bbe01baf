"""Ground-truth renderer of the procedural world: RGB, metric depth and instance ids in one pass.

ModernGL on a standalone EGL context (no display). Every primitive of a scene is one instance of a unit box,
cylinder or sphere, so a frame is three instanced draws plus a full-screen sky pass; the fragment shader writes
three render targets at once: shaded colour (procedural texture x directional + fill + ambient light), the
camera-space z (metric depth along the OpenCV optical axis) and the instance id. The projection is built from
the OpenCV K exactly (pixel centres at +0.5, y down), with the clip-space y flipped so that GL's first row is the
image's top row and read-back needs no flip. Sky pixels (outdoor scenes) have depth 0 and id 0.

One GL context per process is shared by all renderers; framebuffers are kept per resolution and instance
buffers per scene (a small LRU), so rendering many frames of one scene costs only uniforms, draws and read-back.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from engine.geometry import as_se3, invert_se3
from engine.world.scene import SHAPES, Scene
from engine.world.textures import GLSL_TEXTURES

SKY_DEPTH = 0.0  # depth written where no surface is hit
SCENE_CACHE = 4  # scenes whose GPU buffers stay resident
MESH_SEGMENTS = 24  # around cylinders and spheres
SPHERE_STACKS = 12

VERTEX_SHADER = """
#version 330
uniform mat4 u_w2c;   // world -> OpenCV camera
uniform mat4 u_proj;  // OpenCV camera -> clip (from K)
in vec3 in_pos;
in vec3 in_normal;
in mat4 i_model;      // object -> world, rigid
in vec3 i_size;       // half-extents
in vec4 i_tex;        // kind, scale, detail, unused
in vec3 i_ca;
in vec3 i_cb;
in int i_id;
out vec3 v_normal;
out vec3 v_tpos;
out vec3 v_tnormal;
out float v_depth;
out vec3 v_world;
flat out int v_id;
flat out vec4 v_tex;
flat out vec3 v_ca;
flat out vec3 v_cb;
void main() {
    vec3 local = in_pos * i_size;
    vec3 ln = normalize(in_normal / i_size);
    vec4 world = i_model * vec4(local, 1.0);
    v_normal = mat3(i_model) * ln;
    // Static surfaces take their pattern from world coordinates (continuous across wall pieces); moving ones
    // from object coordinates, so the pattern travels with them.
    v_tpos = i_id > 0 ? local : world.xyz;
    v_tnormal = i_id > 0 ? ln : v_normal;
    vec4 cam = u_w2c * world;
    v_depth = cam.z;
    v_world = world.xyz;
    v_id = i_id; v_tex = i_tex; v_ca = i_ca; v_cb = i_cb;
    gl_Position = u_proj * cam;
}
"""

FRAGMENT_SHADER = """
#version 330
uniform vec3 u_light_dir;
uniform vec3 u_light;
uniform vec3 u_fill;
uniform vec3 u_ambient;
uniform vec3 u_eye;
uniform vec3 u_fog_color;
uniform float u_fog_distance;  // 0 = no fog
in vec3 v_normal;
in vec3 v_tpos;
in vec3 v_tnormal;
in float v_depth;
in vec3 v_world;
flat in int v_id;
flat in vec4 v_tex;
flat in vec3 v_ca;
flat in vec3 v_cb;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out int f_id;
""" + GLSL_TEXTURES + """
void main() {
    vec3 n = normalize(v_normal);
    vec3 albedo = procedural_albedo(int(v_tex.x), v_tpos, v_tnormal, v_tex.y, v_tex.z, v_ca, v_cb);
    float d = dot(n, u_light_dir);
    vec3 col = albedo * (u_ambient + u_light * max(d, 0.0) + u_fill * max(-d, 0.0));
    if (u_fog_distance > 0.0) {
        col = mix(u_fog_color, col, exp(-length(v_world - u_eye) / u_fog_distance));
    }
    f_color = vec4(clamp(col, 0.0, 1.0), 1.0);
    f_depth = v_depth;
    f_id = v_id;
}
"""

SKY_VERTEX_SHADER = """
#version 330
in vec2 in_pos;
void main() { gl_Position = vec4(in_pos, 0.0, 1.0); }
"""

SKY_FRAGMENT_SHADER = """
#version 330
uniform mat3 u_c2w_rot;
uniform vec4 u_intr;  // fx, fy, cx, cy in pixels
uniform vec3 u_top;
uniform vec3 u_horizon;
uniform float u_sky_depth;
layout(location = 0) out vec4 f_color;
layout(location = 1) out float f_depth;
layout(location = 2) out int f_id;
void main() {
    // gl_FragCoord is (u, v) in OpenCV pixels because the projection flips y.
    vec3 ray = vec3((gl_FragCoord.x - u_intr.z) / u_intr.x, (gl_FragCoord.y - u_intr.w) / u_intr.y, 1.0);
    float up = normalize(u_c2w_rot * ray).y;
    f_color = vec4(mix(u_horizon, u_top, smoothstep(0.0, 0.5, up)), 1.0);
    f_depth = u_sky_depth;
    f_id = 0;
}
"""


@dataclass
class RenderOutput:
    """One frame (or a batch with a leading N): rgb uint8 [H, W, 3], depth float32 [H, W] (metric z along the
    optical axis, 0 = sky / nothing), ids int32 [H, W] (0 = static background, > 0 = dynamic instance)."""

    rgb: np.ndarray
    depth: np.ndarray
    ids: np.ndarray

    @property
    def dynamic_mask(self) -> np.ndarray:
        return self.ids > 0


def opencv_projection(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """[4, 4] OpenCV camera -> GL clip space for pixel K; clip y is flipped so window row 0 = image row 0.

    ndc_x = 2 u / W - 1 and ndc_y = 2 v / H - 1 where (u, v) = K (x/z, y/z), so a fragment at window
    coordinate (i + 0.5, j + 0.5) is exactly pixel centre (i + 0.5, j + 0.5) of the OpenCV image.
    """
    K = np.asarray(K, np.float64)
    P = np.zeros((4, 4))
    P[0, 0], P[0, 1], P[0, 2] = 2 * K[0, 0] / width, 2 * K[0, 1] / width, 2 * K[0, 2] / width - 1
    P[1, 1], P[1, 2] = 2 * K[1, 1] / height, 2 * K[1, 2] / height - 1
    P[2, 2], P[2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


# ------------------------------------------------------------------------------------------- unit meshes
def _orient(pos: np.ndarray, nrm: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Make every triangle counter-clockwise seen from outside (along its vertex normals)."""
    a, b, c = pos[tris[:, 0]], pos[tris[:, 1]], pos[tris[:, 2]]
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), nrm[tris].sum(1)) > 0
    return np.where(outward[:, None], tris, tris[:, [0, 2, 1]])


def unit_mesh(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Interleaved vertices [V, 6] float32 (position, normal) and triangle indices [T, 3] int32 of the unit
    shape: box [-1, 1]^3, y-axis cylinder of radius 1 and y in [-1, 1], sphere of radius 1."""
    if shape == "box":
        pos, nrm, tris = [], [], []
        for axis in range(3):
            for sign in (-1.0, 1.0):
                u, v = [a for a in range(3) if a != axis]
                base = len(pos)
                for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                    p = np.zeros(3)
                    p[axis], p[u], p[v] = sign, du, dv
                    n = np.zeros(3)
                    n[axis] = sign
                    pos.append(p)
                    nrm.append(n)
                tris += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
        pos, nrm, tris = np.array(pos), np.array(nrm), np.array(tris)
    elif shape == "cylinder":
        ang = np.linspace(0, 2 * math.pi, MESH_SEGMENTS, endpoint=False)
        ring = np.stack([np.sin(ang), np.zeros_like(ang), np.cos(ang)], -1)
        S = MESH_SEGMENTS
        side = np.concatenate([ring + [0, -1, 0], ring + [0, 1, 0]])
        pos = [side, ring + [0, -1, 0], ring + [0, 1, 0], np.array([[0, -1, 0], [0, 1, 0]])]
        nrm = [np.concatenate([ring, ring]), np.tile([0, -1, 0], (S, 1)), np.tile([0, 1, 0], (S, 1)),
               np.array([[0, -1, 0], [0, 1, 0]])]
        pos, nrm = np.concatenate(pos).astype(np.float64), np.concatenate(nrm).astype(np.float64)
        k = np.arange(S)
        k1 = (k + 1) % S
        bottom_c, top_c = 4 * S, 4 * S + 1
        tris = np.concatenate([
            np.stack([k, k1, S + k1], -1), np.stack([k, S + k1, S + k], -1),  # side quads
            np.stack([np.full(S, bottom_c), 2 * S + k1, 2 * S + k], -1),  # bottom cap
            np.stack([np.full(S, top_c), 3 * S + k, 3 * S + k1], -1),  # top cap
        ])
    elif shape == "sphere":
        th = np.linspace(0, math.pi, SPHERE_STACKS + 1)  # from +y down to -y
        ph = np.linspace(0, 2 * math.pi, MESH_SEGMENTS + 1)
        T, P = np.meshgrid(th, ph, indexing="ij")
        pos = np.stack([np.sin(T) * np.sin(P), np.cos(T), np.sin(T) * np.cos(P)], -1).reshape(-1, 3)
        nrm = pos.copy()
        C = MESH_SEGMENTS + 1
        i, j = np.meshgrid(np.arange(SPHERE_STACKS), np.arange(MESH_SEGMENTS), indexing="ij")
        a, b = i * C + j, i * C + j + 1
        c, d = (i + 1) * C + j, (i + 1) * C + j + 1
        tris = np.concatenate([np.stack([a, c, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
        # drop the degenerate triangles at the poles
        p = pos[tris]
        area = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=-1)
        tris = tris[area > 1e-12]
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    tris = _orient(pos, nrm, np.asarray(tris))
    return np.concatenate([pos, nrm], 1).astype(np.float32), tris.astype(np.int32)


INSTANCE_DTYPE = np.dtype([("model", "<f4", (16,)), ("size", "<f4", (3,)), ("tex", "<f4", (4,)),
                           ("ca", "<f4", (3,)), ("cb", "<f4", (3,)), ("id", "<i4")])
INSTANCE_FORMAT = "16f 3f 4f 3f 3f 1i/i"
INSTANCE_ATTRS = ("i_model", "i_size", "i_tex", "i_ca", "i_cb", "i_id")


# ------------------------------------------------------------------------------------------- context
_CONTEXT = None


def gl_context():
    """The process's one standalone EGL context (created on first use)."""
    global _CONTEXT
    if _CONTEXT is None:
        import moderngl

        try:
            _CONTEXT = moderngl.create_context(standalone=True, backend="egl", require=330)
        except Exception as e:  # the driver's own message is the useful part
            raise RuntimeError(
                "could not create a headless OpenGL 3.3 context through EGL "
                f"(is libEGL with a Mesa driver installed? e.g. apt install libegl1 libgl1-mesa-dri): {e}"
            ) from e
    return _CONTEXT


class _SceneBuffers:
    """A scene's instance table on the GPU: one instanced VAO per shape; dynamic rows rewritten per time."""

    def __init__(self, ctx, program, meshes, scene: Scene):
        self.vaos, self.buffers, self.tables, self.dynamic = {}, {}, {}, {}
        self.revision = scene.revision
        for shape in SHAPES:
            prims = [p for p in scene.primitives if p.shape == shape]
            if not prims:
                continue
            table = np.zeros(len(prims), INSTANCE_DTYPE)
            for k, p in enumerate(prims):
                table[k]["model"] = p.pose.T.reshape(-1)  # GLSL mat4 attributes are column-major
                table[k]["size"] = p.size
                mat = p.material.as_array()
                table[k]["tex"], table[k]["ca"], table[k]["cb"] = mat[:4], mat[4:7], mat[7:10]
                table[k]["id"] = p.instance_id
            vbo, ibo = meshes[shape]
            buf = ctx.buffer(table.tobytes())
            self.vaos[shape] = ctx.vertex_array(
                program, [(vbo, "3f 3f", "in_pos", "in_normal"), (buf, INSTANCE_FORMAT, *INSTANCE_ATTRS)],
                index_buffer=ibo, index_element_size=4)
            self.buffers[shape], self.tables[shape] = buf, table
            dyn = [(k, p) for k, p in enumerate(prims) if p.dynamic]
            if dyn:
                self.dynamic[shape] = (np.array([k for k, _ in dyn]), [p.motion for _, p in dyn],
                                       np.stack([p.pose for _, p in dyn]))
    def dynamic_models(self, times: np.ndarray) -> dict[str, np.ndarray]:
        """Column-major model matrices of the moving rows at every time: shape -> [N, D, 16] float32.

        One vectorised route evaluation per entity for the whole batch, instead of one per frame.
        """
        out = {}
        for shape, (rows, motions, offsets) in self.dynamic.items():
            moved = np.stack([m.transform(times) for m in motions], 1) @ offsets  # [N, D, 4, 4]
            out[shape] = np.swapaxes(moved, -1, -2).reshape(len(times), len(rows), 16).astype(np.float32)
        return out

    def write_dynamic(self, models: dict[str, np.ndarray], i: int) -> None:
        """Upload frame i's poses of the moving rows (from `dynamic_models`)."""
        for shape, per_frame in models.items():
            table = self.tables[shape]
            table["model"][self.dynamic[shape][0]] = per_frame[i]
            self.buffers[shape].write(table.tobytes())

    def release(self) -> None:
        for vao in self.vaos.values():
            vao.release()
        for buf in self.buffers.values():
            buf.release()


class WorldRenderer:
    """Offscreen renderer for one resolution; `render(scene, w2c, K, t)` -> RenderOutput.

    near/far only bound the depth buffer (metres); reported depth is the exact camera-space z.
    """

    def __init__(self, width: int, height: int, near: float = 0.05, far: float = 400.0, fog_distance: float = 90.0):
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"WorldRenderer: image size must be positive, got {width}x{height}")
        if not 0 < near < far:
            raise ValueError(f"WorldRenderer: need 0 < near < far, got near={near}, far={far}")
        self.width, self.height, self.near, self.far = int(width), int(height), float(near), float(far)
        self.fog_distance = float(fog_distance)
        import moderngl

        self.ctx = ctx = gl_context()
        self.program = ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER)
        self.sky_program = ctx.program(vertex_shader=SKY_VERTEX_SHADER, fragment_shader=SKY_FRAGMENT_SHADER)
        tri = np.array([[-1, -1], [3, -1], [-1, 3]], np.float32)  # one triangle covering the screen
        self._sky_vbo = ctx.buffer(tri.tobytes())
        self.sky_vao = ctx.vertex_array(self.sky_program, [(self._sky_vbo, "2f", "in_pos")])
        self.meshes = {}
        for shape in SHAPES:
            verts, tris = unit_mesh(shape)
            self.meshes[shape] = (ctx.buffer(verts.tobytes()), ctx.buffer(tris.tobytes()))
        size = (self.width, self.height)
        self._targets = [ctx.texture(size, 4, dtype="f1"), ctx.texture(size, 1, dtype="f4"),
                         ctx.texture(size, 1, dtype="i4")]
        self._depth_rb = ctx.depth_renderbuffer(size)
        self.fbo = ctx.framebuffer(color_attachments=self._targets, depth_attachment=self._depth_rb)
        self._scenes: OrderedDict[int, tuple[Scene, _SceneBuffers]] = OrderedDict()
        self._moderngl = moderngl

    # ---- per-scene GPU state
    def _buffers(self, scene: Scene) -> _SceneBuffers:
        key = id(scene)
        if key in self._scenes:
            cached, bufs = self._scenes[key]
            if cached is scene and bufs.revision == scene.revision:
                self._scenes.move_to_end(key)
                return bufs
            bufs.release()
            del self._scenes[key]
        bufs = _SceneBuffers(self.ctx, self.program, self.meshes, scene)
        self._scenes[key] = (scene, bufs)
        while len(self._scenes) > SCENE_CACHE:
            _, (_, old) = self._scenes.popitem(last=False)
            old.release()
        return bufs

    def _check_camera(self, w2c, K) -> tuple[np.ndarray, np.ndarray]:
        w2c = as_se3(w2c)
        K = np.asarray(K, np.float64)
        if w2c.shape != (4, 4):
            raise ValueError(f"render: w2c must be one [4, 4] pose, got shape {w2c.shape}")
        if K.shape != (3, 3):
            raise ValueError(f"render: K must be [3, 3] pixel intrinsics, got shape {K.shape}")
        if not (np.all(np.isfinite(w2c)) and np.all(np.isfinite(K))) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError("render: camera has non-finite values or non-positive focal lengths")
        return w2c, K

    def _draw(self, scene: Scene, bufs: _SceneBuffers, w2c: np.ndarray, K: np.ndarray) -> None:
        mgl = self._moderngl
        self.fbo.use()
        self.fbo.clear(depth=1.0)
        self.ctx.disable(mgl.DEPTH_TEST | mgl.CULL_FACE)
        self.ctx.depth_mask = False
        c2w = invert_se3(w2c)
        sp = self.sky_program
        sp["u_c2w_rot"].write(c2w[:3, :3].T.astype(np.float32).tobytes())
        sp["u_intr"].value = (K[0, 0], K[1, 1], K[0, 2], K[1, 2])
        sp["u_top"].value = tuple(scene.sky_top)
        sp["u_horizon"].value = tuple(scene.sky_horizon)
        sp["u_sky_depth"].value = SKY_DEPTH
        self.sky_vao.render(mgl.TRIANGLES)
        self.ctx.depth_mask = True
        self.ctx.enable(mgl.DEPTH_TEST | mgl.CULL_FACE)
        self.ctx.front_face = "cw"  # the y flip in the projection mirrors the winding
        p = self.program
        p["u_w2c"].write(w2c.T.astype(np.float32).tobytes())
        p["u_proj"].write(opencv_projection(K, self.width, self.height, self.near, self.far).T.astype(np.float32).tobytes())
        p["u_light_dir"].value = tuple(scene.light_dir)
        p["u_light"].value = tuple(scene.light_color)
        p["u_fill"].value = tuple(scene.fill_color)
        p["u_ambient"].value = tuple(scene.ambient)
        p["u_eye"].value = tuple(c2w[:3, 3])
        p["u_fog_color"].value = tuple(scene.sky_horizon)
        p["u_fog_distance"].value = self.fog_distance if scene.has_sky else 0.0
        for shape, vao in bufs.vaos.items():
            vao.render(mgl.TRIANGLES, instances=len(bufs.tables[shape]))

    def _read_into(self, rgb: np.ndarray, depth: np.ndarray, ids: np.ndarray) -> None:
        self.fbo.read_into(rgb, components=3, attachment=0, alignment=1, dtype="f1")
        self.fbo.read_into(depth, components=1, attachment=1, alignment=1, dtype="f4")
        self.fbo.read_into(ids, components=1, attachment=2, alignment=1, dtype="i4")

    def render(self, scene: Scene, w2c: np.ndarray, K: np.ndarray, t: float = 0.0) -> RenderOutput:
        """One view of `scene` at time t (seconds): w2c [4, 4] OpenCV world-to-camera, K [3, 3] pixels."""
        out = self.render_batch(scene, np.asarray(w2c)[None], np.asarray(K)[None], np.array([t], np.float64))
        return RenderOutput(out.rgb[0], out.depth[0], out.ids[0])

    def render_batch(self, scene: Scene, w2c: np.ndarray, K: np.ndarray, t=0.0) -> RenderOutput:
        """N views: w2c [N, 4, 4], K [N, 3, 3] or one [3, 3], t scalar or [N] -> arrays with a leading N."""
        w2c = np.asarray(w2c, np.float64)
        if w2c.ndim != 3 or w2c.shape[-2:] not in ((4, 4), (3, 4)):
            raise ValueError(f"render: w2c must be [4, 4] world-to-camera poses (a batch [N, 4, 4]), "
                             f"got shape {w2c.shape[1:] if w2c.ndim == 3 else w2c.shape}")
        w2c = as_se3(w2c)
        n = len(w2c)
        K = np.asarray(K, np.float64)
        if K.shape == (3, 3):
            K = np.broadcast_to(K, (n, 3, 3))
        elif K.shape != (n, 3, 3):
            raise ValueError(f"render: K must be [3, 3] pixel intrinsics (or [N, 3, 3] for N poses), got {K.shape}")
        times = np.broadcast_to(np.asarray(t, np.float64), (n,))
        if not np.all(np.isfinite(times)):
            raise ValueError("render: times t must be finite seconds")
        H, W = self.height, self.width
        rgb = np.empty((n, H, W, 3), np.uint8)
        depth = np.empty((n, H, W), np.float32)
        ids = np.empty((n, H, W), np.int32)
        bufs = self._buffers(scene)
        models = bufs.dynamic_models(times)
        for i in range(n):
            wi, Ki = self._check_camera(w2c[i], K[i])
            bufs.write_dynamic(models, i)
            self._draw(scene, bufs, wi, Ki)
            self._read_into(rgb[i], depth[i], ids[i])
        return RenderOutput(rgb, depth, ids)

    def release(self) -> None:
        """Free this renderer's GPU objects (the shared context stays)."""
        for _, bufs in self._scenes.values():
            bufs.release()
        self._scenes.clear()
        for obj in (self.fbo, self._depth_rb, *self._targets, self.sky_vao, self._sky_vbo, self.program,
                    self.sky_program, *[b for pair in self.meshes.values() for b in pair]):
            obj.release()


_SHARED: dict[tuple[int, int], WorldRenderer] = {}


def shared_renderer(width: int, height: int) -> WorldRenderer:
    """One renderer per resolution per process, for callers that render now and then at a few sizes."""
    key = (int(width), int(height))
    if key not in _SHARED:
        _SHARED[key] = WorldRenderer(*key)
    return _SHARED[key]


def limit_rasterizer_threads(n: int) -> None:
    """Cap Mesa llvmpipe's rasteriser threads (must run before the process's first GL context)."""
    os.environ.setdefault("LP_NUM_THREADS", str(max(1, int(n))))
