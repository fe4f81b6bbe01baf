"""The wire protocol between the engine's server and the explorer: every message that crosses the socket.

Each message is a dataclass whose fields carry a docstring and whose values are checked when the message is
built (dtype, shape, finiteness, size, value ranges), so a bad message fails at the sender as clearly as at the
receiver. On the wire a message is a ZeroMQ multipart `[msgpack header, raw buffer 1, raw buffer 2, ...]`: the
header holds the protocol version, the type name, the scalar fields and, for each array, its name, dtype, shape
and the index of its buffer frame. Decoding wraps each buffer with `np.frombuffer` (zero-copy, read-only) and
never unpickles anything; every fault surfaces as a `ProtocolError` with a code and a message naming the fault.
The explorer imports this module, so it depends on NumPy, msgpack and `engine.geometry` only. See docs/protocol.md.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import math
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import numpy as np

from engine.geometry import ORTHONORMAL_TOL, fov_to_intrinsics, look_at, rotation_error

PROTOCOL_VERSION = 1

# Size limits. A 1M-point memory delta is ~24 MB and a 1248x704 frame with float32 depth ~6 MB, so these leave
# room for whole-memory transfers while refusing a header that claims gigabytes before any allocation happens.
MAX_MESSAGE_BYTES = 256 * 2**20  # all frames of one message together
MAX_HEADER_BYTES = 2**20  # the msgpack header alone (prompts are the only long scalars)
MAX_ARRAY_BYTES = 128 * 2**20  # any single array
MAX_STRING_CHARS = 8192
MAX_LIST_ITEMS = 1024  # lists (prompts) and dicts (timings)
MAX_POINTS = 8_000_000
MAX_POSES = 4096
MAX_IMAGE_SIDE = 4096
MAX_MASK_FRAMES = 256
MAX_INT = 2**63 - 1

# Symbolic dimensions used in array shapes; a symbol binds one size across all arrays of a message
# (added_ids [M] and added_xyz [M, 3] must agree), and each symbol has its own ceiling.
DIM_LIMITS: dict[str, int] = {
    "N": MAX_POSES,  # poses of a trajectory
    "I": MAX_POSES,  # rows of per-frame intrinsics (1 or N)
    "M": MAX_POINTS,  # added / inserted points
    "R": MAX_POINTS,  # removed ids
    "C": MAX_POINTS,  # recoloured ids
    "H": MAX_IMAGE_SIDE,
    "W": MAX_IMAGE_SIDE,
    "F": MAX_MASK_FRAMES,
}
SESSION_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
RIGID_LAST_ROW_TOL = 1e-6


class ErrorCode(enum.StrEnum):
    """Why a message was refused or a request failed (the `code` of `Error` and `ProtocolError`)."""

    MALFORMED = "malformed"  # not a well-formed multipart message: garbage header, wrong buffer count, truncation
    VERSION = "version"  # the peer speaks another protocol version
    UNKNOWN_TYPE = "unknown_type"  # no message class has this type name
    INVALID = "invalid"  # a field is missing or has a bad dtype, shape or value
    TOO_LARGE = "too_large"  # over MAX_MESSAGE_BYTES, MAX_HEADER_BYTES or a per-array limit
    NO_SESSION = "no_session"  # a request that needs an open session arrived before one was opened
    NOT_FOUND = "not_found"  # a saved session or server-side file that does not exist
    BUSY = "busy"  # the server cannot take the request now (all workers busy)
    INTERNAL = "internal"  # the server failed while handling a valid request


class ProtocolError(ValueError):
    """A message that cannot be encoded or decoded; `code` says which kind of fault, the message which field."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(f"{code.value}: {message}")
        self.code, self.message = ErrorCode(code), message

    def to_message(self, ref_type: str = "") -> "Error":
        """The `Error` message that tells the peer about this fault."""
        return Error(code=self.code, message=self.message[:MAX_STRING_CHARS], ref_type=ref_type[:64])


# --------------------------------------------------------------------------------------------- field specs
@dataclass(frozen=True)
class ArraySpec:
    """How one array field must look: shape (ints fixed, letters bound per message), allowed dtypes, checks."""

    shape: tuple[int | str, ...]
    dtypes: tuple[str, ...]  # numpy dtype names; the first is the one lists are converted to
    finite: bool = True  # float arrays must hold no NaN or inf
    optional: bool = False

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"[{dims}] {'|'.join(self.dtypes)}" + (" (optional)" if self.optional else "")


def array_field(shape: tuple[int | str, ...], dtypes: str | tuple[str, ...], *, finite: bool = True,
                optional: bool = False) -> Any:
    """A dataclass field holding an array that travels as its own raw buffer frame."""
    spec = ArraySpec(tuple(shape), (dtypes,) if isinstance(dtypes, str) else tuple(dtypes), finite, optional)
    for d in spec.shape:
        if isinstance(d, str) and d not in DIM_LIMITS:
            raise TypeError(f"array dimension symbol {d!r} has no entry in DIM_LIMITS")
    if optional:
        return field(default=None, metadata={"array": spec})
    return field(metadata={"array": spec})


@dataclass(frozen=True)
class _ClassSpec:
    scalars: dict[str, Any]  # name -> annotation
    arrays: dict[str, ArraySpec]
    required: frozenset[str]  # scalar fields without a default


_SPECS: dict[type, _ClassSpec] = {}
REGISTRY: dict[str, type["Message"]] = {}


def _class_spec(cls: type) -> _ClassSpec:
    spec = _SPECS.get(cls)
    if spec is None:
        hints = typing.get_type_hints(cls)
        scalars, arrays, required = {}, {}, set()
        for f in dataclasses.fields(cls):
            if "array" in f.metadata:
                arrays[f.name] = f.metadata["array"]
            else:
                scalars[f.name] = hints[f.name]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.add(f.name)
        spec = _SPECS[cls] = _ClassSpec(scalars, arrays, frozenset(required))
    return spec


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), over the class and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


# --------------------------------------------------------------------------------------------- value checks
def _invalid(where: str, problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID, f"{where}: {problem}")


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce_scalar(value, inner, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _invalid(where, f"expected a bool, got {type(value).__name__}")
        return value
    if tp is int:
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise _invalid(where, f"expected an int, got {type(value).__name__}")
        if not -MAX_INT - 1 <= int(value) <= MAX_INT:
            raise _invalid(where, "integer out of the int64 range")
        return int(value)
    if tp is float:
        if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
            raise _invalid(where, f"expected a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise _invalid(where, f"must be finite, got {value}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _invalid(where, f"expected a string, got {type(value).__name__}")
        if len(value) > MAX_STRING_CHARS:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: string of {len(value)} chars > {MAX_STRING_CHARS}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except (ValueError, TypeError):
            raise _invalid(where, f"{value!r} is not one of {[m.value for m in tp]}") from None
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _invalid(where, f"expected a list, got {type(value).__name__}")
        if len(value) > MAX_LIST_ITEMS:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: list of {len(value)} items > {MAX_LIST_ITEMS}")
        return [_coerce_scalar(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _invalid(where, f"expected a dict, got {type(value).__name__}")
        if len(value) > MAX_LIST_ITEMS:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: dict of {len(value)} items > {MAX_LIST_ITEMS}")
        return {_coerce_scalar(k, args[0], f"{where} key"): _coerce_scalar(v, args[1], f"{where}[{k!r}]")
                for k, v in value.items()}
    raise TypeError(f"{where}: unsupported field annotation {tp!r}")  # a programming error in this module


def _check_dims(shape: tuple[int, ...], spec: ArraySpec, dims: dict[str, int], where: str) -> None:
    """Shape against the spec: fixed sizes must match, symbols bind once per message and stay under limits."""
    if len(shape) != len(spec.shape):
        raise _invalid(where, f"expected {len(spec.shape)} dimensions {spec.describe()}, got shape {tuple(shape)}")
    for axis, (n, want) in enumerate(zip(shape, spec.shape)):
        if isinstance(want, int):
            if n != want:
                raise _invalid(where, f"axis {axis} must be {want} for {spec.describe()}, got shape {tuple(shape)}")
            continue
        if n > DIM_LIMITS[want]:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: {want}={n} exceeds the limit {DIM_LIMITS[want]}")
        if dims.setdefault(want, n) != n:
            raise _invalid(where, f"{want}={n} disagrees with {want}={dims[want]} of another field")


def _coerce_array(value: Any, spec: ArraySpec, dims: dict[str, int], where: str) -> np.ndarray | None:
    if value is None:
        if spec.optional:
            return None
        raise _invalid(where, "missing required array")
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value, dtype=spec.dtypes[0])
        except (TypeError, ValueError, OverflowError) as e:
            raise _invalid(where, f"cannot be read as {spec.dtypes[0]}: {e}") from None
    if value.dtype.name not in spec.dtypes:
        raise _invalid(where, f"dtype must be {' or '.join(spec.dtypes)}, got {value.dtype.name}")
    _check_dims(value.shape, spec, dims, where)
    if value.nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: {value.nbytes} bytes > {MAX_ARRAY_BYTES}")
    if spec.finite and value.dtype.kind == "f" and not _all_finite(value):
        raise _invalid(where, "contains NaN or inf")
    return value


def _all_finite(a: np.ndarray) -> bool:
    if a.dtype.itemsize == 2:  # float16 arithmetic is slow in NumPy: test the exponent bits (all ones = inf/NaN)
        return not ((a.view(np.uint16) & 0x7C00) == 0x7C00).any()
    return bool(np.isfinite(a).all())


def _check_rigid(where: str, w2c: np.ndarray) -> None:
    """Poses [..., 4, 4] must be rigid: last row [0 0 0 1] and an orthonormal rotation."""
    if w2c.size == 0:
        return
    if np.abs(w2c[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max() > RIGID_LAST_ROW_TOL:
        raise _invalid(where, "last row of a pose must be [0 0 0 1]")
    err = float(np.max(rotation_error(w2c[..., :3, :3])))
    if err > ORTHONORMAL_TOL:
        raise _invalid(where, f"rotation is not orthonormal (error {err:.3g} > {ORTHONORMAL_TOL})")


def _check_intrinsics(where: str, intr: np.ndarray) -> None:
    """Normalised [..., 4] fx, fy, cx, cy: focal lengths must be positive."""
    if intr.size and not (intr[..., :2] > 0).all():
        raise _invalid(where, "focal lengths fx, fy must be positive")


def _check_nonneg(where: str, a: np.ndarray) -> None:
    if a.dtype == np.float16:  # sign bit set on a non-zero magnitude; avoids slow float16 arithmetic
        if (a.view(np.uint16) > 0x8000).any():
            raise _invalid(where, "must be non-negative")
    elif a.size and a.min() < 0:
        raise _invalid(where, "must be non-negative")


def check_session_name(name: str, where: str = "name") -> str:
    """Session names are [A-Za-z0-9_-]{1,64}: they become file names on the server, so nothing else passes."""
    if not isinstance(name, str) or not SESSION_NAME_RE.fullmatch(name):
        raise _invalid(where, f"session name must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
    return name


# --------------------------------------------------------------------------------------------- base class
@dataclass(kw_only=True)
class Message:
    """Base of every message: subclasses set `type` (their wire name) and register themselves by it."""

    type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("type")
        if not name:  # an abstract intermediate class (shared fields), not a wire message
            return
        if name in REGISTRY:
            raise TypeError(f"message type {name!r} is registered twice ({REGISTRY[name].__name__}, {cls.__name__})")
        REGISTRY[name] = cls

    def __post_init__(self) -> None:
        spec = _class_spec(type(self))
        for name, tp in spec.scalars.items():
            setattr(self, name, _coerce_scalar(getattr(self, name), tp, f"{self.type}.{name}"))
        dims: dict[str, int] = {}
        for name, aspec in spec.arrays.items():
            setattr(self, name, _coerce_array(getattr(self, name), aspec, dims, f"{self.type}.{name}"))
        self._validate()

    def _validate(self) -> None:
        """Checks across fields and on values; subclasses extend it."""

    @classmethod
    def example(cls) -> "Message":
        """A small valid instance (tests walk every class with it)."""
        raise NotImplementedError(f"{cls.__name__}.example")

    def where(self, name: str) -> str:
        return f"{self.type}.{name}"


def message_classes() -> dict[str, type[Message]]:
    """Type name -> message class, for every message of the protocol."""
    return dict(REGISTRY)


def _pose(eye=(0.0, 1.6, -3.0), target=(0.0, 1.0, 0.0)) -> np.ndarray:
    return look_at(np.array(eye), np.array(target))


def _rng_image(h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------- handshake
@dataclass(kw_only=True)
class Hello(Message):
    """Client -> server, first message: who is connecting and which protocol it speaks."""

    type: ClassVar[str] = "hello"
    protocol_version: int = PROTOCOL_VERSION
    """The protocol version the client was built with; the server answers VERSION errors on a mismatch."""
    client: str = ""
    """Free-form client name and version, for logs."""

    @classmethod
    def example(cls) -> "Hello":
        return cls(client="spatia-explorer 0.1.0")


@dataclass(kw_only=True)
class Capabilities(Message):
    """Server -> client, the answer to Hello: what the model behind this server produces."""

    type: ClassVar[str] = "capabilities"
    protocol_version: int
    """The protocol version the server speaks."""
    model: str
    """Model name (a preset of engine.model.configs or a release name)."""
    backend: str
    """Inference backend in use: eager, compile, tensorrt, ..."""
    width: int
    """Width in pixels of generated frames."""
    height: int
    """Height in pixels of generated frames."""
    fps: float
    """Frame rate of the generated video (the rate the viewer plays it back at), frames per second."""
    chunk_frames: int
    """How many future poses the server wants per Trajectory chunk (frames generated per step)."""
    saved_sessions: list[str] = field(default_factory=list)
    """Names of sessions saved on the server that Load can open."""

    def _validate(self) -> None:
        for name in ("width", "height"):
            if not 1 <= getattr(self, name) <= MAX_IMAGE_SIDE:
                raise _invalid(self.where(name), f"must be in [1, {MAX_IMAGE_SIDE}]")
        if self.fps <= 0:
            raise _invalid(self.where("fps"), "must be positive")
        if self.chunk_frames < 1:
            raise _invalid(self.where("chunk_frames"), "must be at least 1")
        for i, name in enumerate(self.saved_sessions):
            check_session_name(name, self.where(f"saved_sessions[{i}]"))

    @classmethod
    def example(cls) -> "Capabilities":
        return cls(protocol_version=PROTOCOL_VERSION, model="tiny", backend="eager", width=1248, height=704,
                   fps=24.0, chunk_frames=8, saved_sessions=["kitchen_01"])


# --------------------------------------------------------------------------------------------- opening a session
@dataclass(kw_only=True)
class OpenProcedural(Message):
    """Client -> server: start a session in the procedural world generated from a seed."""

    type: ClassVar[str] = "open_procedural"
    seed: int
    """Seed of engine.world's procedural scene (non-negative)."""
    prompt: str = ""
    """Text prompt for generation; empty lets the server describe the scene itself."""

    def _validate(self) -> None:
        if self.seed < 0:
            raise _invalid(self.where("seed"), "must be non-negative")

    @classmethod
    def example(cls) -> "OpenProcedural":
        return cls(seed=7, prompt="a sunlit courtyard")


@dataclass(kw_only=True)
class OpenImage(Message):
    """Client -> server: start from one RGB image with its metric depth (memory initialised by unprojection)."""

    type: ClassVar[str] = "open_image"
    rgb: np.ndarray = array_field(("H", "W", 3), "uint8")
    """Start image uint8 [H, W, 3]."""
    depth: np.ndarray = array_field(("H", "W"), ("float32", "float16"))
    """Metric z-depth float32/float16 [H, W]; 0 marks pixels without depth."""
    w2c: np.ndarray = array_field((4, 4), "float64")
    """World-to-camera pose of the image, OpenCV convention, float64 [4, 4]."""
    intrinsics: np.ndarray = array_field((4,), "float64")
    """Normalised intrinsics [fx/W, fy/H, cx/W, cy/H] float64 [4]."""
    prompt: str = ""
    """Text prompt for generation."""

    def _validate(self) -> None:
        _check_nonneg(self.where("depth"), self.depth)
        _check_rigid(self.where("w2c"), self.w2c)
        _check_intrinsics(self.where("intrinsics"), self.intrinsics)

    @classmethod
    def example(cls) -> "OpenImage":
        return cls(rgb=_rng_image(), depth=np.full((6, 8), 2.5, np.float32), w2c=_pose(),
                   intrinsics=fov_to_intrinsics(60.0, 8 / 6), prompt="a living room")


@dataclass(kw_only=True)
class OpenPoints(Message):
    """Client -> server: start from a point cloud (the explorer reads a PLY file and sends its points)."""

    type: ClassVar[str] = "open_points"
    xyz: np.ndarray = array_field(("M", 3), "float32")
    """Point positions in world metres (y-up), float32 [M, 3]."""
    rgb: np.ndarray = array_field(("M", 3), "uint8")
    """Point colours uint8 [M, 3]."""
    w2c: np.ndarray = array_field((4, 4), "float64")
    """Start camera pose, world-to-camera float64 [4, 4]."""
    intrinsics: np.ndarray = array_field((4,), "float64")
    """Normalised intrinsics of the start camera float64 [4]."""
    prompt: str = ""
    """Text prompt for generation."""
    source: str = ""
    """Name of the file the points came from (display only; the server never opens it)."""

    def _validate(self) -> None:
        _check_rigid(self.where("w2c"), self.w2c)
        _check_intrinsics(self.where("intrinsics"), self.intrinsics)

    @classmethod
    def example(cls) -> "OpenPoints":
        rng = np.random.default_rng(1)
        return cls(xyz=rng.normal(size=(5, 3)).astype(np.float32), rgb=rng.integers(0, 256, (5, 3), dtype=np.uint8),
                   w2c=_pose(), intrinsics=fov_to_intrinsics(60.0, 16 / 9), source="room.ply")


@dataclass(kw_only=True)
class OpenRelease(Message):
    """Client -> server: start from the official release's inputs (start image, w2c.txt, intrinsics.txt, prompts)."""

    type: ClassVar[str] = "open_release"
    image: np.ndarray = array_field(("H", "W", 3), "uint8")
    """Start image uint8 [H, W, 3]."""
    w2c: np.ndarray = array_field(("N", 4, 4), "float64")
    """The whole camera path of w2c.txt, world-to-camera float64 [N, 4, 4]; the first pose is the image's."""
    intrinsics: np.ndarray = array_field(("I", 4), "float64")
    """Normalised intrinsics float64 [I, 4] with I = 1 (shared) or I = N (per frame)."""
    prompts: list[str]
    """One prompt reused for every round, or one per round."""
    masks: np.ndarray | None = array_field(("F", "H", "W"), "uint8", optional=True)
    """Optional dynamic-region masks uint8 [F, H, W] (non-zero = dynamic / editable foreground)."""

    def _validate(self) -> None:
        if len(self.w2c) == 0:
            raise _invalid(self.where("w2c"), "needs at least one pose")
        if len(self.intrinsics) not in (1, len(self.w2c)):
            raise _invalid(self.where("intrinsics"), f"needs 1 or N={len(self.w2c)} rows, got {len(self.intrinsics)}")
        if not self.prompts:
            raise _invalid(self.where("prompts"), "needs at least one prompt")
        _check_rigid(self.where("w2c"), self.w2c)
        _check_intrinsics(self.where("intrinsics"), self.intrinsics)

    @classmethod
    def example(cls) -> "OpenRelease":
        w2c = np.stack([_pose(eye=(0.0, 1.6, -3.0 + 0.1 * i)) for i in range(3)])
        return cls(image=_rng_image(), w2c=w2c, intrinsics=fov_to_intrinsics(60.0, 8 / 6)[None],
                   prompts=["a quiet street"], masks=np.zeros((1, 6, 8), np.uint8))


@dataclass(kw_only=True)
class Load(Message):
    """Client -> server: reopen a session the server saved earlier, by name."""

    type: ClassVar[str] = "load"
    name: str
    """Session name, [A-Za-z0-9_-]{1,64}: it names a server-side file, so no paths are accepted."""

    def _validate(self) -> None:
        check_session_name(self.name, self.where("name"))

    @classmethod
    def example(cls) -> "Load":
        return cls(name="kitchen_01")


@dataclass(kw_only=True)
class Save(Message):
    """Client -> server: save the current session (memory, frames, poses) under a name."""

    type: ClassVar[str] = "save"
    name: str
    """Session name, [A-Za-z0-9_-]{1,64}."""

    def _validate(self) -> None:
        check_session_name(self.name, self.where("name"))

    @classmethod
    def example(cls) -> "Save":
        return cls(name="kitchen_01")


# --------------------------------------------------------------------------------------------- live stream
@dataclass(kw_only=True)
class Trajectory(Message):
    """Client -> server: the camera path for the next frames to generate.

    Stale input is dropped, the newest camera pose wins: `seq` grows with every chunk the client sends; the
    server keeps only the chunk with the highest `seq` it has seen (see `NewestWins`) and ignores any chunk whose
    `seq` is not greater. A new chunk replaces the future poses of the previous one; frames already generated
    stay. `t_input` is echoed in every Frame answering this chunk so the client can measure motion-to-frame latency.
    """

    type: ClassVar[str] = "trajectory"
    seq: int
    """Sequence number, strictly increasing per client (non-negative)."""
    w2c: np.ndarray = array_field(("N", 4, 4), "float64")
    """Future poses, world-to-camera float64 [N, 4, 4], one per frame to generate, in order."""
    intrinsics: np.ndarray = array_field((4,), "float64")
    """Normalised intrinsics [fx/W, fy/H, cx/W, cy/H] float64 [4] for all poses of the chunk."""
    t_input: float = 0.0
    """Client clock (seconds) of the input event that produced this chunk; echoed back in Frame."""

    def _validate(self) -> None:
        if self.seq < 0:
            raise _invalid(self.where("seq"), "must be non-negative")
        if len(self.w2c) == 0:
            raise _invalid(self.where("w2c"), "needs at least one pose")
        _check_rigid(self.where("w2c"), self.w2c)
        _check_intrinsics(self.where("intrinsics"), self.intrinsics)

    @classmethod
    def example(cls) -> "Trajectory":
        w2c = np.stack([_pose(eye=(0.05 * i, 1.6, -3.0)) for i in range(4)])
        return cls(seq=3, w2c=w2c, intrinsics=fov_to_intrinsics(60.0, 16 / 9), t_input=12.5)


@dataclass(kw_only=True)
class Cancel(Message):
    """Client -> server: stop generating for the given trajectory (the clip in flight is abandoned)."""

    type: ClassVar[str] = "cancel"
    seq: int = -1
    """The trajectory seq to cancel; -1 cancels whatever is running."""

    @classmethod
    def example(cls) -> "Cancel":
        return cls(seq=3)


@dataclass(kw_only=True)
class Frame(Message):
    """Server -> client: one decoded frame, sent as soon as it is decoded."""

    type: ClassVar[str] = "frame"
    index: int
    """Frame index in the session's video (0 = start image)."""
    seq: int
    """The Trajectory seq this frame answers."""
    rgb: np.ndarray = array_field(("H", "W", 3), "uint8")
    """The frame, uint8 [H, W, 3]."""
    depth: np.ndarray | None = array_field(("H", "W"), ("float16", "float32"), optional=True)
    """Optional metric z-depth float16/float32 [H, W] (0 where unknown)."""
    w2c: np.ndarray = array_field((4, 4), "float64")
    """Pose the frame was generated for, world-to-camera float64 [4, 4]."""
    t_input: float = 0.0
    """Echo of the answered Trajectory's t_input (client clock, seconds)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Server-side timings of this frame in milliseconds, by stage name (queue, generate, decode, ...)."""

    def _validate(self) -> None:
        if self.index < 0:
            raise _invalid(self.where("index"), "must be non-negative")
        if self.depth is not None:
            _check_nonneg(self.where("depth"), self.depth)
        _check_rigid(self.where("w2c"), self.w2c)

    @classmethod
    def example(cls) -> "Frame":
        return cls(index=9, seq=3, rgb=_rng_image(), depth=np.full((6, 8), 3.0, np.float16), w2c=_pose(),
                   t_input=12.5, timings={"generate": 310.0, "decode": 12.5})


@dataclass(kw_only=True)
class MemoryDelta(Message):
    """Server -> client: how the spatial memory changed from version_from to version_to.

    Apply deltas in order: a delta applies only to a viewer holding `version_from`; a `full` delta carries the
    whole memory in `added_*` and replaces whatever the viewer holds (sent first, and whenever a viewer is lost).
    """

    type: ClassVar[str] = "memory_delta"
    version_from: int
    """Memory version this delta applies to (ignored when full)."""
    version_to: int
    """Memory version after applying it."""
    full: bool = False
    """True: `added_*` is the whole memory and replaces the viewer's copy; removed/recoloured are empty."""
    voxel_size: float = 0.01
    """Voxel size of the memory in metres (the viewer sizes its point sprites by it)."""
    added_ids: np.ndarray = array_field(("M",), "int64")
    """Ids of new points int64 [M], unique, non-negative."""
    added_xyz: np.ndarray = array_field(("M", 3), "float32")
    """Positions of new points in world metres float32 [M, 3]."""
    added_rgb: np.ndarray = array_field(("M", 3), "uint8")
    """Colours of new points uint8 [M, 3]."""
    removed_ids: np.ndarray = array_field(("R",), "int64")
    """Ids of removed points int64 [R]."""
    recolored_ids: np.ndarray = array_field(("C",), "int64")
    """Ids of points whose colour changed int64 [C]."""
    recolored_rgb: np.ndarray = array_field(("C", 3), "uint8")
    """Their new colours uint8 [C, 3]."""

    def _validate(self) -> None:
        if self.version_to < self.version_from:
            raise _invalid(self.where("version_to"), f"{self.version_to} < version_from {self.version_from}")
        if self.voxel_size <= 0:
            raise _invalid(self.where("voxel_size"), "must be positive")
        if self.full and (len(self.removed_ids) or len(self.recolored_ids)):
            raise _invalid(self.where("full"), "a full delta carries no removed or recoloured ids")
        for name in ("added_ids", "removed_ids", "recolored_ids"):
            _check_nonneg(self.where(name), getattr(self, name))

    @classmethod
    def empty(cls, version: int, voxel_size: float = 0.01, full: bool = False) -> "MemoryDelta":
        """A delta with no changes (or, with full=True, an empty memory)."""
        z = np.zeros(0, np.int64)
        return cls(version_from=version, version_to=version, full=full, voxel_size=voxel_size, added_ids=z,
                   added_xyz=np.zeros((0, 3), np.float32), added_rgb=np.zeros((0, 3), np.uint8), removed_ids=z,
                   recolored_ids=z, recolored_rgb=np.zeros((0, 3), np.uint8))

    @classmethod
    def example(cls) -> "MemoryDelta":
        rng = np.random.default_rng(2)
        return cls(version_from=4, version_to=5, voxel_size=0.01, added_ids=np.arange(100, 106, dtype=np.int64),
                   added_xyz=rng.normal(size=(6, 3)).astype(np.float32),
                   added_rgb=rng.integers(0, 256, (6, 3), dtype=np.uint8), removed_ids=np.array([3, 4], np.int64),
                   recolored_ids=np.array([7], np.int64), recolored_rgb=np.array([[255, 0, 0]], np.uint8))


@dataclass(kw_only=True)
class Resync(Message):
    """Client -> server: the viewer's memory is out of step (a delta it could not apply); send a full delta."""

    type: ClassVar[str] = "resync"
    have_version: int = -1
    """The memory version the viewer holds, -1 for none (for the server's logs)."""

    @classmethod
    def example(cls) -> "Resync":
        return cls(have_version=4)


@dataclass(kw_only=True)
class ClipDone(Message):
    """Server -> client: a clip finished (all its frames sent, memory updated)."""

    type: ClassVar[str] = "clip_done"
    clip: int
    """Index of the clip in the session (0 = first round)."""
    seq: int
    """The Trajectory seq the clip answered."""
    first_frame: int
    """Index of the clip's first new frame."""
    num_frames: int
    """How many new frames the clip produced."""
    memory_version: int
    """Memory version after the clip's update."""
    timings: dict[str, float] = field(default_factory=dict)
    """Stage timings of the clip in milliseconds (retrieval, render, generate, decode, reconstruct, update...)."""

    @classmethod
    def example(cls) -> "ClipDone":
        return cls(clip=1, seq=3, first_frame=121, num_frames=72, memory_version=5,
                   timings={"render": 40.0, "generate": 9000.0, "update": 800.0})


# --------------------------------------------------------------------------------------------- edits
class Primitive(enum.StrEnum):
    """Shapes that EditInsertPrimitive can add to the memory."""

    BOX = "box"
    SPHERE = "sphere"


@dataclass(kw_only=True)
class _Edit(Message):
    """Fields shared by all memory edits (abstract: no wire type of its own)."""

    edit_id: int
    """Client-chosen id of this edit; the server's Ack or Error refers to it."""


@dataclass(kw_only=True)
class EditRemoveBox(_Edit):
    """Client -> server: remove every memory point inside an axis-aligned world box."""

    type: ClassVar[str] = "edit_remove_box"
    box_min: np.ndarray = array_field((3,), "float64")
    """Minimum corner of the box in world metres float64 [3]."""
    box_max: np.ndarray = array_field((3,), "float64")
    """Maximum corner float64 [3] (every component >= box_min's)."""

    def _validate(self) -> None:
        if not (self.box_min <= self.box_max).all():
            raise _invalid(self.where("box_max"), "every component must be >= box_min's")

    @classmethod
    def example(cls) -> "EditRemoveBox":
        return cls(edit_id=1, box_min=np.array([-1.0, 0.0, -1.0]), box_max=np.array([1.0, 2.0, 1.0]))


@dataclass(kw_only=True)
class EditRemoveIds(_Edit):
    """Client -> server: remove the memory points with these ids (a selection made in the viewer)."""

    type: ClassVar[str] = "edit_remove_ids"
    ids: np.ndarray = array_field(("M",), "int64")
    """Point ids int64 [M]."""

    @classmethod
    def example(cls) -> "EditRemoveIds":
        return cls(edit_id=2, ids=np.array([1, 5, 9], np.int64))


@dataclass(kw_only=True)
class EditRecolor(_Edit):
    """Client -> server: give points new colours."""

    type: ClassVar[str] = "edit_recolor"
    ids: np.ndarray = array_field(("M",), "int64")
    """Point ids int64 [M]."""
    rgb: np.ndarray = array_field(("M", 3), "uint8")
    """New colours uint8 [M, 3]."""

    @classmethod
    def example(cls) -> "EditRecolor":
        return cls(edit_id=3, ids=np.array([1, 5], np.int64), rgb=np.array([[0, 255, 0], [0, 0, 255]], np.uint8))


@dataclass(kw_only=True)
class EditInsertPrimitive(_Edit):
    """Client -> server: add a solid-colour primitive (its surface sampled at the memory's voxel size)."""

    type: ClassVar[str] = "edit_insert_primitive"
    shape: Primitive
    """Which primitive: box or sphere."""
    center: np.ndarray = array_field((3,), "float64")
    """Centre in world metres float64 [3]."""
    size: np.ndarray = array_field((3,), "float64")
    """Full extent along x, y, z in metres float64 [3] (a sphere uses it as the ellipsoid's diameters), > 0."""
    rgb: np.ndarray = array_field((3,), "uint8")
    """Colour uint8 [3]."""

    def _validate(self) -> None:
        if not (self.size > 0).all():
            raise _invalid(self.where("size"), "every extent must be positive")

    @classmethod
    def example(cls) -> "EditInsertPrimitive":
        return cls(edit_id=4, shape=Primitive.BOX, center=np.array([0.0, 0.5, 2.0]), size=np.array([0.5, 1.0, 0.5]),
                   rgb=np.array([200, 30, 30], np.uint8))


@dataclass(kw_only=True)
class EditInsertPoints(_Edit):
    """Client -> server: add points (e.g. an object read from a PLY and placed by the user)."""

    type: ClassVar[str] = "edit_insert_points"
    xyz: np.ndarray = array_field(("M", 3), "float32")
    """Positions in world metres float32 [M, 3]."""
    rgb: np.ndarray = array_field(("M", 3), "uint8")
    """Colours uint8 [M, 3]."""

    @classmethod
    def example(cls) -> "EditInsertPoints":
        rng = np.random.default_rng(3)
        return cls(edit_id=5, xyz=rng.normal(size=(4, 3)).astype(np.float32),
                   rgb=rng.integers(0, 256, (4, 3), dtype=np.uint8))


@dataclass(kw_only=True)
class EditUndo(_Edit):
    """Client -> server: undo the most recent edit not yet undone (the server answers with a MemoryDelta)."""

    type: ClassVar[str] = "edit_undo"

    @classmethod
    def example(cls) -> "EditUndo":
        return cls(edit_id=6)


# --------------------------------------------------------------------------------------------- replies
@dataclass(kw_only=True)
class Ack(Message):
    """Either way: a request succeeded (open, load, save, edit, cancel)."""

    type: ClassVar[str] = "ack"
    ref_type: str
    """Type name of the acknowledged message."""
    ref_id: int = -1
    """Its seq or edit_id where it has one, else -1."""
    message: str = ""
    """Human-readable detail (e.g. the saved session's name)."""

    @classmethod
    def example(cls) -> "Ack":
        return cls(ref_type="save", message="saved kitchen_01")


@dataclass(kw_only=True)
class Error(Message):
    """Either way: a message was refused or a request failed."""

    type: ClassVar[str] = "error"
    code: ErrorCode
    """What kind of failure (ErrorCode)."""
    message: str
    """What exactly went wrong, for a person to read."""
    ref_type: str = ""
    """Type name of the offending message when known, else empty."""

    @classmethod
    def example(cls) -> "Error":
        return cls(code=ErrorCode.NOT_FOUND, message="no saved session named 'attic'", ref_type="load")


@dataclass(kw_only=True)
class Heartbeat(Message):
    """Either way, every second or so while idle: the peer is alive (the client shows the connection state)."""

    type: ClassVar[str] = "heartbeat"
    t: float
    """Sender's clock in seconds."""
    seq: int = 0
    """Heartbeat counter of the sender."""

    @classmethod
    def example(cls) -> "Heartbeat":
        return cls(t=100.25, seq=17)


# --------------------------------------------------------------------------------------------- the rule for poses
class NewestWins:
    """Stale input is dropped, the newest camera pose wins: keep only the Trajectory with the highest seq.

    The server offers every Trajectory it drains from its socket; `take()` returns the newest not yet taken, or
    None. A chunk whose seq is not greater than the newest seen is stale and refused (offer returns False).
    """

    def __init__(self) -> None:
        self.last_seq = -1
        self._pending: Trajectory | None = None

    def offer(self, traj: Trajectory) -> bool:
        if traj.seq <= self.last_seq:
            return False
        self.last_seq, self._pending = traj.seq, traj
        return True

    def take(self) -> Trajectory | None:
        traj, self._pending = self._pending, None
        return traj


# --------------------------------------------------------------------------------------------- wire format
def _wire_scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [_wire_scalar(v) for v in value]
    if isinstance(value, dict):
        return {k: _wire_scalar(v) for k, v in value.items()}
    return value


def encode(msg: Message) -> list[bytes | memoryview]:
    """Message -> multipart frames [msgpack header, buffer 1, ...]; buffers are zero-copy views of the arrays.

    Send with `socket.send_multipart(frames, copy=False)` for large arrays; keep the arrays unchanged until sent.
    """
    if not isinstance(msg, Message) or not msg.type:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"not a protocol message: {type(msg).__name__}")
    spec = _class_spec(type(msg))
    fields = {name: _wire_scalar(getattr(msg, name)) for name in spec.scalars}
    arrays, buffers = [], []
    for name in spec.arrays:
        a = getattr(msg, name)
        if a is None:
            continue
        a = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False)  # little-endian on the wire
        arrays.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape), "frame": len(buffers) + 1})
        buffers.append(a.reshape(-1).view(np.uint8).data)
    header = msgpack.packb({"v": PROTOCOL_VERSION, "type": msg.type, "fields": fields, "arrays": arrays},
                           use_bin_type=True)
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{msg.type}: header of {len(header)} bytes > {MAX_HEADER_BYTES}")
    total = len(header) + sum(b.nbytes for b in buffers)
    if total > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"{msg.type}: {total} bytes > MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    return [header, *buffers]


def _as_bytes_view(frame: Any, i: int) -> memoryview:
    """bytes, bytearray, memoryview or a zmq.Frame (its .buffer) -> a flat byte memoryview, without copying."""
    buf = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buf)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    except (TypeError, ValueError):
        raise ProtocolError(ErrorCode.MALFORMED, f"frame {i} is not a byte buffer ({type(frame).__name__})") from None


def _malformed(problem: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, problem)


def _read_header(view: memoryview) -> dict:
    if view.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header of {view.nbytes} bytes > {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(view, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage; all mean the same here
        raise _malformed(f"header is not valid msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise _malformed(f"header must be a map, got {type(header).__name__}")
    missing = {"v", "type", "fields", "arrays"} - header.keys()
    if missing:
        raise _malformed(f"header lacks {sorted(missing)}")
    if not isinstance(header["v"], int) or isinstance(header["v"], bool) or header["v"] != PROTOCOL_VERSION:
        raise ProtocolError(ErrorCode.VERSION, f"protocol version {header['v']!r}, this side speaks {PROTOCOL_VERSION}")
    if not isinstance(header["type"], str) or header["type"] not in REGISTRY:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {header['type']!r}")
    if not isinstance(header["fields"], dict) or not isinstance(header["arrays"], list):
        raise _malformed("header 'fields' must be a map and 'arrays' a list")
    return header


def decode(frames: typing.Sequence[Any]) -> Message:
    """Multipart frames -> Message. Arrays are read-only views of the frames (copy them to modify).

    Raises ProtocolError, and nothing else, on any fault: garbage or truncated frames, wrong buffer count,
    unknown type, wrong version, missing or unknown fields, bad dtype or shape, non-finite values, oversize.
    """
    if not isinstance(frames, (list, tuple)) or not frames:
        raise _malformed("expected a non-empty list of frames")
    views = [_as_bytes_view(f, i) for i, f in enumerate(frames)]
    total = sum(v.nbytes for v in views)
    if total > MAX_MESSAGE_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of {total} bytes > MAX_MESSAGE_BYTES={MAX_MESSAGE_BYTES}")
    header = _read_header(views[0])
    cls = REGISTRY[header["type"]]
    spec = _class_spec(cls)
    tname = cls.type

    kwargs: dict[str, Any] = {}
    for name, value in header["fields"].items():
        if name not in spec.scalars:
            raise _invalid(f"{tname}.{name}", "unknown field")
        kwargs[name] = value
    missing = spec.required - kwargs.keys()
    if missing:
        raise _invalid(tname, f"missing field(s) {sorted(missing)}")

    entries = header["arrays"]
    if len(entries) != len(views) - 1:
        raise _malformed(f"{tname}: header lists {len(entries)} arrays but {len(views) - 1} buffer frames came")
    dims: dict[str, int] = {}
    used: set[int] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not {"name", "dtype", "shape", "frame"} <= entry.keys():
            raise _malformed(f"{tname}: each array entry needs name, dtype, shape and frame")
        name, dtype, shape, index = entry["name"], entry["dtype"], entry["shape"], entry["frame"]
        if not isinstance(name, str) or name not in spec.arrays:
            raise _invalid(f"{tname}.{name}", "unknown array field")
        if name in kwargs:
            raise _invalid(f"{tname}.{name}", "array sent twice")
        aspec, where = spec.arrays[name], f"{tname}.{name}"
        if not isinstance(dtype, str) or dtype not in aspec.dtypes:
            raise _invalid(where, f"dtype must be {' or '.join(aspec.dtypes)}, got {dtype!r}")
        if (not isinstance(shape, list)
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
            raise _invalid(where, f"shape must be a list of non-negative ints, got {shape!r}")
        _check_dims(tuple(shape), aspec, dims, where)  # bounds every dimension before any size arithmetic
        if not isinstance(index, int) or isinstance(index, bool) or not 1 <= index < len(views) or index in used:
            raise _malformed(f"{where}: bad or reused buffer frame index {index!r}")
        used.add(index)
        dt = np.dtype(dtype).newbyteorder("<")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > MAX_ARRAY_BYTES:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{where}: {nbytes} bytes > {MAX_ARRAY_BYTES}")
        if views[index].nbytes != nbytes:
            raise _malformed(f"{where}: shape {tuple(shape)} {dtype} needs {nbytes} bytes, "
                             f"frame {index} has {views[index].nbytes}")
        kwargs[name] = np.frombuffer(views[index], dtype=dt).reshape(shape)
    for name, aspec in spec.arrays.items():
        if name not in kwargs and not aspec.optional:
            raise _invalid(f"{tname}.{name}", "missing required array")
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as e:  # a value the field checks did not foresee
        raise _invalid(tname, f"{type(e).__name__}: {e}") from None
