"""ModernGL plumbing shared by the viewer's drawing modules: contexts, shaders by name, targets, read-back.

Shaders live in the repository's `shaders/` folder, one `.glsl` file per program holding both stages behind
`VERTEX_SHADER` / `FRAGMENT_SHADER` defines (moderngl-window's layout). Every drawing module takes a
`moderngl.Context`, so the same code draws into a pyglet window or into a standalone EGL context (tests, headless
benchmarks, screenshots). GLSL 3.30 core keeps the shaders portable to the OpenGL 3.3 contexts windows ask for.
"""

from __future__ import annotations

import functools
from pathlib import Path

import moderngl
import numpy as np

SHADER_DIR = Path(__file__).resolve().parents[1] / "shaders"
GLSL_VERSION = "#version 330 core"
Rect = tuple[int, int, int, int]  # x, y, width, height in framebuffer pixels, y up (OpenGL)


@functools.lru_cache(maxsize=None)
def shader_source(name: str) -> str:
    """Text of `shaders/<name>.glsl`; the error lists the shaders that do exist."""
    path = SHADER_DIR / f"{name}.glsl"
    if not path.is_file():
        known = sorted(p.stem for p in SHADER_DIR.glob("*.glsl"))
        raise FileNotFoundError(f"no shader named {name!r} in {SHADER_DIR.name}/ (have: {', '.join(known)})")
    return path.read_text()


def program(ctx: moderngl.Context, name: str) -> moderngl.Program:
    """Compile and link both stages of `shaders/<name>.glsl`."""
    src = shader_source(name)
    stage = lambda define: f"{GLSL_VERSION}\n#define {define}\n#line 1\n{src}"  # noqa: E731
    try:
        return ctx.program(vertex_shader=stage("VERTEX_SHADER"), fragment_shader=stage("FRAGMENT_SHADER"))
    except moderngl.Error as e:
        raise RuntimeError(f"shader {name}.glsl failed to build: {e}") from None


def standalone_context() -> moderngl.Context:
    """A window-less OpenGL 3.3+ context via EGL (software llvmpipe on machines without a GPU)."""
    try:
        return moderngl.create_context(standalone=True, backend="egl", require=330)
    except Exception as e:  # moderngl raises plain Exception when EGL or a driver is missing
        raise RuntimeError(f"cannot create a headless OpenGL context through EGL ({e}); install libegl1 and "
                           "libgl1-mesa-dri") from None


def renderer_name(ctx: moderngl.Context) -> str:
    info = ctx.info
    return f"{info.get('GL_RENDERER', '?')} (OpenGL {info.get('GL_VERSION', '?')})"


def offscreen(ctx: moderngl.Context, width: int, height: int) -> moderngl.Framebuffer:
    """An RGBA8 + depth framebuffer of width x height for headless drawing."""
    return ctx.framebuffer(color_attachments=[ctx.renderbuffer((width, height), 4)],
                           depth_attachment=ctx.depth_renderbuffer((width, height)))


def read_rgb(fbo: moderngl.Framebuffer, viewport: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Framebuffer pixels -> uint8 [H, W, 3] with the top row first (GL reads bottom-up). Works on a window's
    default framebuffer too (call it before the buffer swap): that one is first blitted into an offscreen copy,
    because reading it directly sets a GL error that the window toolkit later reports as its own."""
    x, y, w, h = viewport or (0, 0, *fbo.size)
    if fbo.glo == 0:
        copy = fbo.ctx.framebuffer(color_attachments=[fbo.ctx.renderbuffer(fbo.size, 4)])
        try:
            fbo.ctx.copy_framebuffer(copy, fbo)
            return read_rgb(copy, (x, y, w, h))
        finally:
            copy.release()
    data = fbo.read(viewport=(x, y, w, h), components=3, alignment=1)
    return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()


def gl_projection(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """OpenCV pixel intrinsics -> an OpenGL clip matrix [4, 4] acting on OpenCV camera coordinates.

    Pixel (u, v) with v down and centres at +0.5 maps to NDC x = 2u/W - 1, y = 1 - 2v/H; clip w is the camera z,
    so depth tests and perspective interpolation work as usual and points behind the camera are clipped.
    """
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    P = np.zeros((4, 4))
    P[0, 0], P[0, 2] = 2 * fx / width, 2 * cx / width - 1
    P[1, 1], P[1, 2] = -2 * fy / height, 1 - 2 * cy / height
    P[2, 2], P[2, 3] = (far + near) / (far - near), -2 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


def mat4_bytes(m: np.ndarray) -> bytes:
    """A row-major NumPy [4, 4] as the column-major float32 bytes a GLSL mat4 uniform expects."""
    return np.ascontiguousarray(np.asarray(m, np.float64).T, dtype=np.float32).tobytes()


def ndc_rect(rect: tuple[float, float, float, float], viewport: tuple[int, int, int, int]) -> tuple[float, ...]:
    """A pixel rectangle (x, y, w, h; y up, inside `viewport`) -> NDC (x0, y0, x1, y1) of that viewport."""
    x, y, w, h = rect
    vx, vy, vw, vh = viewport
    return (2 * (x - vx) / vw - 1, 2 * (y - vy) / vh - 1, 2 * (x + w - vx) / vw - 1, 2 * (y + h - vy) / vh - 1)


class TexturedQuad:
    """Draws an RGB(A) uint8 image into a pixel rectangle; the texture is reused while the image size holds."""

    def __init__(self, ctx: moderngl.Context, filter_linear: bool = True):
        self.ctx = ctx
        self.prog = program(ctx, "textured")
        self.vao = ctx.vertex_array(self.prog, [])
        self.texture: moderngl.Texture | None = None
        self.filter = (moderngl.LINEAR, moderngl.LINEAR) if filter_linear else (moderngl.NEAREST, moderngl.NEAREST)

    def upload(self, image: np.ndarray) -> None:
        """uint8 [H, W, 3 or 4] (top row first) into the texture, reallocating only when the size changes."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected a uint8 [H, W, 3|4] image, got {image.dtype} {image.shape}")
        h, w, c = image.shape
        if self.texture is None or self.texture.size != (w, h) or self.texture.components != c:
            if self.texture is not None:
                self.texture.release()
            self.texture = self.ctx.texture((w, h), c, alignment=1)
            self.texture.filter = self.filter
        self.texture.write(np.ascontiguousarray(image))

    @property
    def size(self) -> tuple[int, int] | None:
        return None if self.texture is None else self.texture.size

    def draw(self, rect: tuple[float, float, float, float], viewport: tuple[int, int, int, int],
             alpha: float = 1.0) -> None:
        """Draw into pixel rect (x, y, w, h; y up) of the currently bound framebuffer's `viewport`."""
        if self.texture is None:
            return
        self.ctx.viewport = viewport
        self.texture.use(0)
        self.prog["image"].value = 0
        self.prog["alpha"].value = float(alpha)
        self.prog["rect"].value = ndc_rect(rect, viewport)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        self.ctx.disable(moderngl.DEPTH_TEST)
        self.vao.render(moderngl.TRIANGLE_STRIP, vertices=4)

    def release(self) -> None:
        if self.texture is not None:
            self.texture.release()
        self.vao.release()
        self.prog.release()
