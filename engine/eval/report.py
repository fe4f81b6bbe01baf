"""What an evaluation run leaves behind: results.json, report.md (tables shaped like the paper's Tables 4-7, a
PSNR/SSIM table and a checklist of the quality bars) and PNG figures (sample strips, metrics against K, against the
number of clips and against the voxel size).

The quality bars are reported as measured, pass or fail; a bar that could not be measured (a metric undefined on
every scene, a table with a single row) is shown as n/a with the reason and does not pass. In the JSON, NaN
(undefined) becomes null and an infinite PSNR (identical frames) the string "inf".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.eval.suite import TRAINING_SEEDS, Sample, SuiteResult


@dataclass(frozen=True)
class QualityBars:
    match_acc_min: float = 0.70  # the paper's Spatia reaches 0.698 on RealEstate10K
    psnr_covered_min: float = 22.0  # dB on the pixels the memory covers
    psnr_c_drop_max: float = 1.5  # dB lost by PSNR_C from the shortest to the longest loop of Table 6


# --------------------------------------------------------------------------------------------- JSON
def jsonable(obj):
    """Plain JSON types: NaN -> None, +-inf -> "inf"/"-inf", NumPy scalars and arrays -> Python, tuples -> lists."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        if math.isnan(v):
            return None
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    return obj


# --------------------------------------------------------------------------------------------- quality bars
def _finite(*values) -> bool:
    return all(v is not None and not math.isnan(v) for v in values)


def _check(name: str, bar: str, passed: bool | None, measured: str) -> dict:
    return {"name": name, "bar": bar, "passed": passed, "measured": measured}


def quality_checks(results: dict, bars: QualityBars | None = None) -> list[dict]:
    """The issue's quality bars against the measured tables."""
    bars = bars or QualityBars()
    t = results["tables"]
    full = t["main"][0]
    checks = []

    # 1. the full model beats every ablation on the closed-loop metrics
    ablations = [r for r in t["table4"] if not (r["scene_video"] and r["references"])]
    wins, parts = [], []
    for r in ablations:
        diffs = []
        for m, higher in (("psnr_c", True), ("ssim_c", True), ("lpips_c", False), ("match_acc", True)):
            if _finite(full[m], r[m]):
                d = full[m] - r[m]
                wins.append(d > 0 if higher else d < 0)
                diffs.append(f"{HEADERS[m]} {d:+.3g}")
        sv, ref = ("on" if r["scene_video"] else "off"), ("on" if r["references"] else "off")
        parts.append(f"vs scene video {sv}, refs {ref}: " + (", ".join(diffs) or "undefined"))
    checks.append(_check("full model beats every ablation (Table 4, closed loop)",
                         "PSNR_C, SSIM_C, Match Acc higher and LPIPS_C lower than each ablation",
                         all(wins) if wins else None, "; ".join(parts) or "n/a: no closed-loop metric defined"))

    # 2. Match Accuracy rises with K
    rows = [(r["K"], r["match_acc"]) for r in t["table5"]]
    vals = [v for _, v in rows]
    if len(rows) < 2:
        passed, measured = None, f"n/a: the model takes {results['model']['num_refs']} reference(s): one K only"
    elif not _finite(*vals):
        passed, measured = None, "n/a: Match Accuracy undefined for some K"
    else:
        passed = all(b >= a for a, b in zip(vals, vals[1:])) and vals[-1] > vals[0]
        measured = ", ".join(f"K={k}: {v:.3f}" for k, v in rows)
    checks.append(_check("Match Accuracy rises with K (Table 5)", "non-decreasing in K, and higher at the largest K",
                         passed, measured))

    # 3. long horizon: PSNR_C falls by less than the bar from the shortest to the longest loop
    mem = sorted((r["clips"], r["psnr_c"]) for r in t["table6"] if r["memory"])
    if len(mem) < 2:
        passed, measured = None, "n/a: one loop length only"
    elif not _finite(mem[0][1], mem[-1][1]):
        passed, measured = None, "n/a: PSNR_C undefined"
    else:
        drop = mem[0][1] - mem[-1][1]
        passed = drop < bars.psnr_c_drop_max
        measured = f"{mem[0][1]:.2f} dB at {mem[0][0]} clips -> {mem[-1][1]:.2f} dB at {mem[-1][0]} clips (drop {drop:.2f})"
    checks.append(_check("PSNR_C holds over long loops (Table 6)",
                         f"falls by < {bars.psnr_c_drop_max:g} dB from the shortest to the longest loop", passed, measured))

    # 4. Match Accuracy of the full model
    ma = full["match_acc"]
    checks.append(_check("Match Accuracy", f">= {bars.match_acc_min:g}", ma >= bars.match_acc_min if _finite(ma) else None,
                         f"{ma:.3f} ({results['backends']['match']['name']})" if _finite(ma) else
                         "n/a: undefined on every scene (no high-confidence self-matches)"))

    # 5. PSNR on the pixels the memory covered
    pc = full["psnr_covered"]
    checks.append(_check("PSNR on covered pixels", f">= {bars.psnr_covered_min:g} dB",
                         pc >= bars.psnr_covered_min if _finite(pc) else None,
                         f"{pc:.2f} dB (coverage {full['coverage']:.1%})" if _finite(pc) else "n/a: no covered pixels"))
    return checks


# --------------------------------------------------------------------------------------------- markdown
FORMATS = {"psnr": "{:.2f}", "psnr_covered": "{:.2f}", "psnr_uncovered": "{:.2f}", "psnr_c": "{:.2f}",
           "ssim": "{:.3f}", "ssim_c": "{:.3f}", "lpips": "{:.3f}", "lpips_c": "{:.3f}", "match_acc": "{:.3f}",
           "coverage": "{:.1%}"}
HEADERS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "psnr_covered": "PSNR covered",
           "psnr_uncovered": "PSNR uncovered", "coverage": "coverage", "psnr_c": "PSNR_C", "ssim_c": "SSIM_C",
           "lpips_c": "LPIPS_C", "match_acc": "Match Acc"}


def fmt(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return FORMATS.get(metric, "{}").format(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _yes(v: bool) -> str:
    return "yes" if v else "no"


def markdown(results: dict, checks: list[dict], figures: list[str]) -> str:
    t, cfg, m = results["tables"], results["config"], results["model"]
    headers = {**HEADERS, "match_acc": f"Match Acc ({results['backends']['match']['name']})"}  # the backend in every table
    seeds = [s["seed"] for s in results["scenes"]]
    lp = results["backends"]["lpips"]
    loop_frames = cfg["chunks"] * m["chunk_frames"]
    out = [
        f"# Spatia evaluation: model `{m['name']}` on {len(seeds)} held-out procedural scenes",
        "",
        f"Scenes: seeds {', '.join(map(str, seeds))} (held out: training used seeds 0..{TRAINING_SEEDS - 1}); closed "
        f"`{cfg['path']}` paths; {m['width']}x{m['height']}, {m['chunk_frames']} frames per chunk; Tables 4, 5 and 7 "
        f"on loops of {cfg['chunks']} chunks ({loop_frames} generated frames). Means over scenes.",
        f"Match backend: **{results['backends']['match']['name']}**: {results['backends']['match']['note']}.",
        "LPIPS: " + (f"{lp['net']} ({lp['weights']})" if lp.get("available") else f"unavailable: {lp['reason']}") + ".",
        "",
        "## Quality bars",
        "",
        _table(["bar", "target", "measured", "result"],
               [[c["name"], c["bar"], c["measured"], "N/A" if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")]
                for c in checks]),
        "",
        "## Against the ground truth (full model)",
        "",
    ]
    main_cols = ["psnr", "ssim", "lpips", "psnr_covered", "psnr_uncovered", "coverage", "psnr_c", "ssim_c", "lpips_c",
                 "match_acc"]
    out += [_table([headers[c] for c in main_cols], [[fmt(c, r[c]) for c in main_cols] for r in t["main"]]), ""]
    closed = ["psnr_c", "ssim_c", "lpips_c", "match_acc"]
    out += ["## Table 4: scene video and reference frames (closed loop)", "",
            _table(["scene video", "references", "PSNR", *[headers[c] for c in closed]],
                   [[_yes(r["scene_video"]), _yes(r["references"]), fmt("psnr", r["psnr"]),
                     *[fmt(c, r[c]) for c in closed]] for r in t["table4"]]), ""]
    out += ["## Table 5: number of reference frames K (capped at the model's "
            f"{m['num_refs']})", "",
            _table(["K", headers["match_acc"], "PSNR_C", "SSIM_C", "LPIPS_C"],
                   [[str(r["K"]), *[fmt(c, r[c]) for c in ("match_acc", "psnr_c", "ssim_c", "lpips_c")]]
                    for r in t["table5"]]), ""]
    by_clips: dict[int, dict] = {}
    for r in t["table6"]:
        by_clips.setdefault(r["clips"], {})["mem" if r["memory"] else "none"] = r
    out += ["## Table 6: long horizon (closed loops of N clips); memory vs no memory (no scene video, no references)", "",
            _table(["clips", "frames", *[headers[k] for k in closed], "no memory PSNR_C", "no memory SSIM_C",
                    "no memory LPIPS_C"],
                   [[str(c), str(c * m["chunk_frames"]), *[fmt(k, v["mem"][k]) for k in closed],
                     *[fmt(k, v["none"][k]) for k in ("psnr_c", "ssim_c", "lpips_c")]] for c, v in sorted(by_clips.items())]),
            ""]
    vox = ["psnr", "ssim", "lpips", "psnr_covered", "psnr_c"]
    out += ["## Table 7: memory voxel size", "",
            _table(["voxel (m)", *[headers[c] for c in vox]],
                   [[f"{r['voxel']:g}", *[fmt(c, r[c]) for c in vox]] for r in t["table7"]]), ""]
    undefined = sorted({f"seed {s['seed']}: {s['match']['reason']}" for run in results["runs"].values()
                        for s in run["per_scene"] if s["match"]["reason"]})
    if undefined:
        out += ["Match Accuracy undefined on: " + "; ".join(undefined[:5]) + (" ..." if len(undefined) > 5 else ""), ""]
    if results["skipped_seeds"]:
        out += ["Seeds skipped (no closed path fits): " + ", ".join(str(s["seed"]) for s in results["skipped_seeds"]), ""]
    tm = results["timing"]
    out += ["## Figures", "", *[f"![{Path(f).stem}]({Path(f).name})" for f in figures], "",
            f"Timing: {tm['runs']} runs in {tm['seconds']:.0f} s, median chunk {tm['chunk_ms_median']:.0f} ms.", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # a bare Figure renders with Agg: no pyplot, no global backend

    return Figure(figsize=(width, height), dpi=100)


def plot_samples(samples: list[Sample], path: Path) -> None:
    """Per sampled scene: rows of true frames, generated frames and the memory's render at the same poses."""
    rows = [(s, name, imgs) for s in samples
            for name, imgs in (("truth", s.truth), ("generated", s.generated), ("memory render", s.scene_video))]
    cols = max(len(s.frame_index) for s in samples)
    fig = _figure(1.4 * cols + 1, 1.4 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (s, name, imgs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c])
            else:
                ax.set_axis_off()
            if r % 3 == 0 and c < len(s.frame_index):
                ax.set_title(f"frame {s.frame_index[c]}", fontsize=7)
        axes[r, 0].set_ylabel(f"{s.seed}\n{name}", fontsize=7)
    fig.suptitle("full model: truth / generated / memory render (first and last frame share a pose)", fontsize=8)
    fig.savefig(path)


def _line_plot(path: Path, title: str, xlabel: str, series: dict[str, list[tuple[float, float]]],
               ylabels: dict[str, str]) -> None:
    """One panel per metric; series maps 'metric|label' to (x, y) points."""
    metrics = list(dict.fromkeys(k.split("|")[0] for k in series))
    fig = _figure(4 * len(metrics), 3.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    xs_all = sorted({x for pts in series.values() for x, _ in pts})
    for ax, metric in zip(axes, metrics):
        ax.set_xticks(xs_all)  # the measured settings only (K, clips, voxel sizes), not a continuum
        for key, pts in series.items():
            name, label = key.split("|")
            if name != metric:
                continue
            pts = [(x, y) for x, y in pts if y is not None and not math.isnan(y) and not math.isinf(y)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabels[metric])
        ax.grid(alpha=0.3)
        if len([k for k in series if k.startswith(metric + "|")]) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def write_report(suite: SuiteResult, out: str | Path, bars: QualityBars | None = None) -> dict[str, Path]:
    """results.json, report.md and the PNG figures in `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(suite.results)
    results["checks"] = quality_checks(results, bars)
    results["bars"] = asdict(bars or QualityBars())
    t = results["tables"]
    paths: dict[str, Path] = {}
    if suite.samples:
        paths["samples"] = out / "samples.png"
        plot_samples(suite.samples, paths["samples"])
    paths["metric_vs_k"] = out / "metric_vs_k.png"
    _line_plot(paths["metric_vs_k"], "reference frames K (Table 5)", "K",
               {"match_acc|full": [(r["K"], r["match_acc"]) for r in t["table5"]],
                "psnr_c|full": [(r["K"], r["psnr_c"]) for r in t["table5"]]},
               {"match_acc": "Match Accuracy", "psnr_c": "PSNR_C (dB)"})
    paths["metric_vs_clips"] = out / "metric_vs_clips.png"
    series: dict[str, list] = {}
    for r in t["table6"]:
        label = "memory" if r["memory"] else "no memory"
        for metric in ("psnr_c", "ssim_c"):
            series.setdefault(f"{metric}|{label}", []).append((r["clips"], r[metric]))
    _line_plot(paths["metric_vs_clips"], "long-horizon closed loops (Table 6)", "clips", series,
               {"psnr_c": "PSNR_C (dB)", "ssim_c": "SSIM_C"})
    paths["metric_vs_voxel"] = out / "metric_vs_voxel.png"
    _line_plot(paths["metric_vs_voxel"], "memory voxel size (Table 7)", "voxel (m)",
               {"psnr|all pixels": [(r["voxel"], r["psnr"]) for r in t["table7"]],
                "psnr|covered": [(r["voxel"], r["psnr_covered"]) for r in t["table7"]],
                "psnr_c|full": [(r["voxel"], r["psnr_c"]) for r in t["table7"]]},
               {"psnr": "PSNR (dB)", "psnr_c": "PSNR_C (dB)"})
    paths["report"] = out / "report.md"
    paths["report"].write_text(markdown(results, results["checks"], [str(p) for k, p in paths.items() if k != "report"]))
    paths["results"] = out / "results.json"
    paths["results"].write_text(json.dumps(jsonable(results), indent=1, allow_nan=False))
    return paths
