"""`make demo`: the main job with the shipped default model (models/tiny) and the default procedural scene.

With a display: the explorer in a window, its generation server started as a child process. Without one: the same
app headless, driving the packaged scripted tour, writing `demo-out/window.mp4` (what the window would have shown:
memory view, generated frames and HUD) and PNG snapshots. Extra arguments go to `spatia explore`.
"""

from __future__ import annotations

import os
import sys

from engine import cli

OUT = "demo-out"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        print("Spatia Explorer: WASD to move, right mouse button to look, Tab to change the layout, X to edit, "
              "Ctrl+Q to quit (docs/explorer.md lists every key).", flush=True)
        return cli.main(["explore", *argv])
    print(f"No display: running the scripted tour headless; the video goes to {OUT}/window.mp4.", flush=True)
    code = cli.main(["explore", "--headless", "--out", OUT, *argv])
    if code == 0:
        print(f"Wrote {OUT}/window.mp4 and PNG snapshots in {OUT}/ (memory view, generated frames, HUD).")
    return code


if __name__ == "__main__":
    sys.exit(main())
