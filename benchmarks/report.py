"""Turn pytest-benchmark's JSON into a Markdown table (and a PNG of throughput per group).

    python -m pytest --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python -m benchmarks.report benchmarks/results/cpu.json [-o benchmarks/results/cpu.md]

The table lists, per benchmark group, the median time, the images/s, the BPs (``bp``: PGD updates per
image, ``bp_executed``: backward passes actually run per image) and the speed-up against the group's
baseline (the case whose ``extra_info["baseline"]`` is true), with the date, device, torch and
triton versions on top.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ("case", "median", "images/s", "bp", "bp_executed", "speed-up", "notes")


def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt(v, digits=3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def header(data: dict) -> str:
    m = data.get("machine_info", {})
    device = m.get("cuda_device") or f"CPU ({m.get('cpu', {}).get('brand_raw', m.get('processor', '?'))}, " \
                                      f"{m.get('cpu_threads', '?')} threads)"
    return (f"Run {data.get('datetime', '?')[:19]} · device: {device} · torch {m.get('torch', '?')} · "
            f"triton {m.get('triton', '?')} · size `{m.get('fastadv_size', '?')}`")


def rows_by_group(data: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data.get("benchmarks", []):
        groups[b.get("group") or b["name"].split("[")[0]].append(b)
    return groups


def table(data: dict) -> str:
    lines = [header(data), ""]
    for group, benches in sorted(rows_by_group(data).items()):
        base = next((b for b in benches if b.get("extra_info", {}).get("baseline")), None)
        lines += [f"### {group}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for b in sorted(benches, key=lambda b: b["stats"]["median"]):
            info, med = b.get("extra_info", {}), b["stats"]["median"]
            speed = base["stats"]["median"] / med if base else None
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(info.items())
                              if k not in ("bp", "bp_executed", "images_per_sec", "baseline"))
            lines.append("| " + " | ".join([
                b["name"].split("[", 1)[-1].rstrip("]") if "[" in b["name"] else b["name"],
                _fmt_time(med), _fmt(info.get("images_per_sec")), _fmt(info.get("bp")),
                _fmt(info.get("bp_executed")), f"{speed:.2f}×" if speed else "", notes]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict, path: Path) -> Path | None:
    """One horizontal bar chart per group: images/s (or 1/median when no throughput is recorded)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    groups = rows_by_group(data)
    if not groups:
        return None
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.2 + 0.45 * sum(len(v) for v in groups.values())),
                             squeeze=False)
    for ax, (group, benches) in zip(axes[:, 0], sorted(groups.items())):
        names = [b["name"].split("[", 1)[-1].rstrip("]") for b in benches]
        vals = [b.get("extra_info", {}).get("images_per_sec") or 1.0 / b["stats"]["median"] for b in benches]
        ax.barh(names, vals, color="tab:blue")
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlabel("images/s (or calls/s)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(header(data), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    p.add_argument("-o", "--output", type=Path, help="Markdown file to write (default: print)")
    p.add_argument("--png", type=Path, help="PNG to draw (default: next to --output)")
    args = p.parse_args(argv)
    if not args.json.is_file():
        p.error(f"json: no such file: {args.json}")
    data = json.loads(args.json.read_text())
    md = table(data)
    if args.output:
        args.output.write_text(md + "\n")
        png = plot(data, args.png or args.output.with_suffix(".png"))
        print(f"wrote {args.output}" + (f" and {png}" if png else ""))
    else:
        print(md)
        if args.png:
            plot(data, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
