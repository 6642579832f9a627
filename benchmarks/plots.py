"""Plots of the JSON lines ``e2e.py --json FILE`` writes: latency percentiles vs offered rate, RSS over a soak.

    python benchmarks/plots.py latency benchmarks/results/ramp.jsonl   # -> benchmarks/results/latency.png
    python benchmarks/plots.py rss benchmarks/results/soak.jsonl       # -> benchmarks/results/soak_rss.png

The latency plot takes ``ramp`` and ``rate`` lines (``--ramp``, or ``--rates``
sweeps), groups them by build and offered target and draws the median of each
percentile; the RSS plot takes ``soak`` lines and their ``rss_series``.
matplotlib is needed only here, not to run the benchmark, so it is imported
when a plot is drawn and its absence is reported with the command that fixes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: Modes whose lines carry latency at a fixed offered rate.
LATENCY_MODES = ("ramp", "rate")
PERCENTILES = (("p50_ms", "p50", ":"), ("p95_ms", "p95", "--"), ("p99_ms", "p99", "-"))
#: The issue's latency bounds, drawn as reference lines (ms).
LIMITS_MS = ((50.0, "p95 target at 1,000 msg/s"), (100.0, "p99 bound of the ramp"))
#: Minutes at the start of a soak left out of the RSS fit (as e2e.py's SOAK_WARMUP_S).
WARMUP_MIN = 2.0
INSTALL_HINT = 'pip install "matplotlib>=3.7"   (or the project\'s optional extra, if it has one)'


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend; exit with an install hint when it is missing."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(f"plots.py needs matplotlib, which is not installed: {INSTALL_HINT}")
    matplotlib.use("Agg")  # no display on the benchmark machine
    import matplotlib.pyplot as plt
    return plt


def read_lines(paths: list[Path], modes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The JSON lines of ``paths`` whose mode is one of ``modes``; other lines (tables, notes) are skipped."""
    lines = []
    for path in paths:
        for text in path.read_text().splitlines():
            if not text.startswith("{"):
                continue
            line = json.loads(text)
            if line.get("mode") in modes:
                lines.append(line)
    return lines


def latency_points(lines: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per build, one point per offered target: medians of offered rate and of each percentile over its runs.

    Runs at the same target share a point, so repetitions (``--repeat``) give
    medians, as in the README's tables, rather than a cloud.
    """
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        target = line.get("extra", {}).get("target_per_s") or round(line["rate_hz"] * line["devices"], 1)
        groups[(line["build"], target)].append(line)
    points: dict[str, list[dict[str, float]]] = defaultdict(list)
    for (build, target), runs in sorted(groups.items()):
        point = {"target": target, "offered": statistics.median(r["offered_per_s"] for r in runs),
                 "runs": len(runs), "lost": max(r["lost"] for r in runs)}
        for key, _label, _style in PERCENTILES:
            point[key] = statistics.median(r[key] for r in runs)
        points[build].append(point)
    return points


def plot_latency(paths: list[Path], out: Path) -> None:
    """Latency percentiles (log) against offered rate (log), one colour per build, one line style per percentile."""
    points = latency_points(read_lines(paths, LATENCY_MODES))
    if not points:
        sys.exit(f"no {'/'.join(LATENCY_MODES)} lines in {', '.join(map(str, paths))}")
    plt = pyplot()
    from matplotlib import ticker
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (build, build_points) in zip(colours, sorted(points.items())):
        offered = [p["offered"] for p in build_points]
        for key, label, style in PERCENTILES:
            ax.plot(offered, [p[key] for p in build_points], style, marker="o", markersize=3.5, color=colour,
                    label=f"{build} {label}")
        lossy = [p for p in build_points if p["lost"]]
        if lossy:
            ax.scatter([p["offered"] for p in lossy], [p["p99_ms"] for p in lossy], s=90, facecolors="none",
                       edgecolors=colour, linewidths=1.5, label=f"{build}: loss in some run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1-2-3-5 steps: "500", not "5 x 10^2"
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        axis.set_major_formatter(ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    for limit_ms, label in LIMITS_MS:
        ax.axhline(limit_ms, color="grey", linewidth=0.8, linestyle="-.")
        ax.text(0.995, limit_ms, label, transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=8, color="grey")
    ax.set_xlabel("offered rate, msg/s (median of runs)")
    raw = " (raw-paho: received)" if "raw-paho" in points else ""
    ax.set_ylabel(f"publish -> committed row{raw}, ms (median of runs)")
    ax.set_title(f"autocore end to end: latency percentiles vs offered rate ({' vs '.join(sorted(points))})")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def plot_rss(paths: list[Path], out: Path, warmup_min: float = WARMUP_MIN) -> None:
    """RSS over soak time per build, with a least-squares line (and its slope, MB/min) after the warm-up.

    The first minutes are left out of the fit: caches, pools and the allocator
    fill up then, and their rise is not a leak.
    """
    lines = [line for line in read_lines(paths, ("soak",)) if line.get("rss_series")]
    if not lines:
        sys.exit(f"no soak lines with an rss_series in {', '.join(map(str, paths))}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for line in lines:
        series = [(t / 60, rss) for t, rss in line["rss_series"]]
        minutes, rss = zip(*series)
        ax.plot(minutes, rss, linewidth=1, label=f"{line['build']}: {line['offered_per_s']:.0f} msg/s, "
                                                 f"{line['duration_s'] / 60:.0f} min")
        settled = [(m, r) for m, r in series if warmup_min <= m <= line["duration_s"] / 60]
        if len(settled) > 2:
            fit = statistics.linear_regression(*zip(*settled))
            ends = (settled[0][0], settled[-1][0])
            ax.plot(ends, [fit.intercept + fit.slope * m for m in ends], "--", linewidth=1,
                    label=f"{line['build']} fit after {warmup_min:g} min warm-up: {fit.slope:+.4f} MB/min")
    ax.set_xlabel("minutes since load start")
    ax.set_ylabel("gateway RSS, MB")
    ax.set_title("autocore soak: RSS over time (50 devices x 10 Hz)")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("latency", "rss"))
    parser.add_argument("files", type=Path, nargs="+", help="JSON lines written by e2e.py --json")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: benchmarks/results/)")
    parser.add_argument("--warmup", type=float, default=WARMUP_MIN, help="rss: minutes left out of the fit")
    args = parser.parse_args(argv)
    out = args.out or RESULTS / ("latency.png" if args.kind == "latency" else "soak_rss.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.kind == "latency":
        plot_latency(args.files, out)
    else:
        plot_rss(args.files, out, args.warmup)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
