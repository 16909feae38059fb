"""Turn pytest-benchmark's JSON into a Markdown table and PNGs.

    python -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python -m benchmarks.report benchmarks/results/cpu.json [--out benchmarks/results/cpu.md]

Per benchmark group (a kernel size, a loader epoch, a training epoch...): one row per case with the
median time, images/s, ``bp`` (PGD updates per image; PGD-10 = 10.00), ``bp_executed`` (backward
passes actually run per image) and the speed-up against the group's baseline (the case whose
``extra_info["baseline"]`` is true: ``eager`` for kernels, the per-sample loop for the loader,
``at`` for training epochs, ``pgd`` for attacks). The speed-up is the ratio of images/s when both
cases record it (cases of one group may time different numbers of images), else of median times.
Keys whose value is the same in every case of a group (device, data, model...) are printed once
under the group's heading; the other ``extra_info`` keys go to the ``notes`` column.

On top: the run's date, device, torch and triton versions, CPU threads, the load average when the
run started and ``$FASTADV_BENCH_NOTE`` (all from ``machine_info``, filled in by the root
``conftest.py``). With ``--out X.md`` it also draws ``X.png`` (images/s per case, baselines grey)
and, when any case records BPs, ``X_bp.png`` (bp and bp_executed per case).

Accepted ``extra_info`` spellings: ``bp`` / ``bp_avg`` / ``bp_per_image``; ``bp_executed`` /
``bp_executed_avg``; ``images_per_sec`` / ``images_per_s``.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from pathlib import Path

COLUMNS = ("case", "median", "images/s", "bp", "bp_executed", "speed-up", "notes")
BP_KEYS = ("bp", "bp_avg", "bp_per_image")
BP_EXEC_KEYS = ("bp_executed", "bp_executed_avg")
IPS_KEYS = ("images_per_sec", "images_per_s")
# Shown in their own columns (or not at all) rather than in the notes.
_NOT_NOTES = set(BP_KEYS + BP_EXEC_KEYS + IPS_KEYS + ("baseline",))


# ------------------------------------------------------------------------------- formatting
def _fmt_time(s: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt(v, digits=3) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 1e4 else str(v)
    if isinstance(v, (list, tuple)):
        return "/".join(_fmt(x, digits) for x in v)
    return str(v).replace("|", "\\|")


def _fmt_rate(v) -> str:
    if v is None:
        return ""
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_bp(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _first(info: dict, keys):
    for k in keys:
        if info.get(k) is not None:
            return info[k]
    return None


def bp_of(b: dict):
    return _first(b.get("extra_info", {}), BP_KEYS)


def bp_executed_of(b: dict):
    return _first(b.get("extra_info", {}), BP_EXEC_KEYS)


def ips_of(b: dict):
    return _first(b.get("extra_info", {}), IPS_KEYS)


def case_name(b: dict) -> str:
    name = b.get("name", "?")
    return name.split("[", 1)[1].rstrip("]") if "[" in name else name


# ------------------------------------------------------------------------------- structure
def device_of(data: dict) -> str:
    m = data.get("machine_info", {})
    if m.get("cuda_device"):
        return m["cuda_device"]
    cpu = m.get("cpu", {}) if isinstance(m.get("cpu"), dict) else {}
    brand = cpu.get("brand_raw") or m.get("processor") or "?"
    return f"CPU ({brand}, {m.get('cpu_threads', '?')} torch threads" + (
        f" of {m['cpu_count']} cores)" if m.get("cpu_count") else ")")


def header(data: dict) -> str:
    m = data.get("machine_info", {})
    parts = [f"Run {str(data.get('datetime', '?'))[:19].replace('T', ' ')}",
             f"device: {device_of(data)}", f"torch {m.get('torch', '?')}",
             f"triton {m.get('triton', '?')}", f"size `{m.get('fastadv_size', '?')}`"]
    load = m.get("load_avg_at_start")
    if load:
        parts.append(f"load average at start {_fmt(list(load))}")
    line = " · ".join(parts)
    if m.get("note"):
        line += f"\n\n**Note:** {m['note']}"
    return line


def rows_by_group(data: dict) -> "OrderedDict[str, list]":
    """Groups in the order of their first case; only benchmarks with stats (a JSON written under
    --benchmark-disable has none)."""
    groups: "OrderedDict[str, list]" = OrderedDict()
    for b in data.get("benchmarks", []):
        if not b.get("stats") or b["stats"].get("median") is None:
            continue
        groups.setdefault(b.get("group") or b.get("name", "?").split("[")[0], []).append(b)
    return groups


def baseline_of(benches: list):
    return next((b for b in benches if b.get("extra_info", {}).get("baseline")), None)


def speedup(b: dict, base) -> float | None:
    """Throughput ratio against ``base`` (images/s when both have it, else median times)."""
    if base is None or b is base:
        return None if base is None else 1.0
    ib, i0 = ips_of(b), ips_of(base)
    if ib and i0:
        return ib / i0
    return base["stats"]["median"] / b["stats"]["median"]


def common_info(benches: list) -> dict:
    """extra_info keys (outside the table's own columns) with one value across the group."""
    if len(benches) < 2:
        return {}
    infos = [b.get("extra_info", {}) for b in benches]
    out = {}
    for k, v in infos[0].items():
        if k in _NOT_NOTES:
            continue
        if all(k in i and i[k] == v for i in infos[1:]):
            out[k] = v
    return out


def table(data: dict, png_names=()) -> str:
    lines = ["# fastadv benchmarks", "", header(data), ""]
    groups = rows_by_group(data)
    if not groups:
        lines += ["(no benchmark results in this JSON: was it written with --benchmark-only?)", ""]
        return "\n".join(lines)
    for name in png_names:
        lines += [f"![{name}]({name})", ""]
    for group, benches in groups.items():
        base = baseline_of(benches)
        common = common_info(benches)
        lines += [f"### {group}", ""]
        if common:
            lines += ["; ".join(f"{k}: {_fmt(v)}" for k, v in common.items()), ""]
        lines += ["| " + " | ".join(COLUMNS) + " |",
                  "|---|" + "---:|" * (len(COLUMNS) - 2) + "---|"]
        ordered = ([base] if base else []) + [b for b in benches if b is not base]
        for b in ordered:
            info = b.get("extra_info", {})
            notes = ", ".join(f"{k}={_fmt(v)}" for k, v in info.items()
                              if k not in _NOT_NOTES and k not in common and v not in ("", None))
            sp = speedup(b, base)
            label = case_name(b) + (" (baseline)" if b is base else "")
            lines.append("| " + " | ".join([
                label, _fmt_time(b["stats"]["median"]), _fmt_rate(ips_of(b)), _fmt_bp(bp_of(b)),
                _fmt_bp(bp_executed_of(b)), f"{sp:.2f}×" if sp is not None else "", notes]) + " |")
        lines.append("")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- plots
def _title(data: dict) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(header(data).split("\n")[0].replace("`", ""), 130))


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


def plot(data: dict, path: Path) -> Path | None:
    """One horizontal bar chart per group: images/s (or calls/s when no throughput is recorded),
    the baseline in grey."""
    plt = _plt()
    # a lone case (e.g. the bp-curve smoke run) has nothing to compare against
    groups = OrderedDict((g, bs) for g, bs in rows_by_group(data).items() if len(bs) > 1)
    if plt is None or not groups:
        return None
    n_rows = sum(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.0 + 0.32 * n_rows + 0.55 * len(groups)),
                             squeeze=False)
    for ax, (group, benches) in zip(axes[:, 0], groups.items()):
        base = baseline_of(benches)
        names = [case_name(b) for b in benches][::-1]
        vals = [ips_of(b) or 1.0 / b["stats"]["median"] for b in benches][::-1]
        colors = ["tab:gray" if b is base else "tab:blue" for b in benches][::-1]
        ax.barh(names, vals, color=colors)
        ax.set_title(group, fontsize=8, loc="left")
        ax.set_xlabel("images/s (calls/s where no images/s is recorded)", fontsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle(_title(data), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bp(data: dict, path: Path) -> Path | None:
    """bp and bp_executed per case, for the groups whose cases record BPs."""
    plt = _plt()
    groups = [(g, [b for b in bs if bp_of(b) is not None]) for g, bs in rows_by_group(data).items()]
    groups = [(g, bs) for g, bs in groups if bs]
    if plt is None or not groups:
        return None
    n_rows = sum(len(bs) for _, bs in groups)
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 1.0 + 0.38 * n_rows + 0.55 * len(groups)),
                             squeeze=False)
    for ax, (group, benches) in zip(axes[:, 0], groups):
        names = [case_name(b) for b in benches][::-1]
        bp = [bp_of(b) for b in benches][::-1]
        ex = [bp_executed_of(b) or 0.0 for b in benches][::-1]
        y = list(range(len(names)))
        ax.barh([v + 0.2 for v in y], bp, height=0.4, color="tab:blue", label="bp (updates)")
        ax.barh([v - 0.2 for v in y], ex, height=0.4, color="tab:orange", label="bp_executed")
        ax.set_yticks(y, names)
        ax.set_title(group, fontsize=8, loc="left")
        ax.set_xlabel("per image (PGD-10 = 10)", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(_title(data), fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("json", type=Path, help="pytest-benchmark JSON (--benchmark-json=...)")
    p.add_argument("-o", "--out", "--output", dest="out", type=Path,
                   help="Markdown file to write (default: print); PNGs are drawn next to it")
    p.add_argument("--png", type=Path, help="throughput PNG (default: next to --out)")
    p.add_argument("--no-png", action="store_true", help="draw no PNGs")
    args = p.parse_args(argv)
    if not args.json.is_file():
        p.error(f"json: no such file: {args.json}")
    try:
        data = json.loads(args.json.read_text())
    except json.JSONDecodeError as e:
        p.error(f"json: {args.json} is not JSON ({e})")
    pngs = []
    if not args.no_png and (args.out or args.png):
        png = args.png or args.out.with_suffix(".png")
        if plot(data, png):
            pngs.append(png)
        bp_png = png.with_name(png.stem + "_bp.png")
        if plot_bp(data, bp_png):
            pngs.append(bp_png)
    md_dir = args.out.parent if args.out else Path(".")
    names = [q.name if q.parent == md_dir else str(q) for q in pngs]
    md = table(data, png_names=names)
    if args.out:
        args.out.write_text(md + "\n")
        print(f"wrote {args.out}" + "".join(f" and {q}" for q in pngs))
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
