"""What a chaos run leaves behind for a person: a summary, a JSON report, the history and a
timeline picture.

`format_summary` and `timeline_series` are pure. `write_report` and `render_timeline` write
files and nothing else. matplotlib is a dev-only dependency: it is imported lazily by
`render_timeline`, and `write_report` records why the picture is missing instead of failing.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftmq.chaos.checker import ANOMALY_KINDS, CheckResult
from raftmq.chaos.history import FaultWindow, History, Op, write_jsonl

REPORT_FILE = "report.json"
HISTORY_FILE = "history.jsonl"
# Fault windows are labelled by kind on the timeline only up to this many faults.
TIMELINE_LABELS_MAX = 20
TIMELINE_FILE = "timeline.png"

# Examples printed per anomaly kind in the summary (the JSON report keeps more).
SUMMARY_EXAMPLES_PER_KIND = 3
# Bound on timeline buckets: a long run gets wider buckets instead of a huge array.
TIMELINE_BUCKETS_MAX = 20_000
_KIND_WIDTH = max(len(kind) for kind in ANOMALY_KINDS)


@dataclass(frozen=True, slots=True)
class TimelineSeries:
    """Per-bucket send figures of a history, the data behind `render_timeline`.

    Rates count completions in the bucket; latencies are of ok sends, bucketed by their
    invoke time, so a stall shows where it began (None: no ok send invoked in the bucket)."""

    bucket_ms: float
    # Start of each bucket, seconds since run start.
    bucket_start_s: list[float]
    acked_per_s: list[float]
    failed_per_s: list[float]
    indeterminate_per_s: list[float]
    latency_median_ms: list[float | None]
    latency_max_ms: list[float | None]
    # Time of the last op (ms since run start); 0 for an empty history.
    end_ms: float


def timeline_series(ops: Sequence[Op], *, bucket_ms: float = 1000.0) -> TimelineSeries:
    """Bucket the sends of `ops` (default 1 s buckets, widened so that there are at most
    `TIMELINE_BUCKETS_MAX`)."""
    assert bucket_ms > 0
    end_ms = max((op.time_ms for op in ops), default=0.0)
    bucket_ms = max(bucket_ms, end_ms / TIMELINE_BUCKETS_MAX)
    buckets = int(end_ms // bucket_ms) + 1
    acked = [0] * buckets
    failed = [0] * buckets
    indeterminate = [0] * buckets
    latencies_ms: dict[int, list[float]] = defaultdict(list)
    invoke_ms: dict[str, float] = {}
    for op in ops:
        if op.f != "send":
            continue
        if op.type == "invoke":
            invoke_ms[op.value] = op.time_ms
            continue
        bucket = int(op.time_ms // bucket_ms)
        if op.type == "ok":
            acked[bucket] += 1
            started_ms = invoke_ms.get(op.value)
            if started_ms is not None:
                latencies_ms[int(started_ms // bucket_ms)].append(op.time_ms - started_ms)
        elif op.type == "fail":
            failed[bucket] += 1
        else:
            indeterminate[bucket] += 1
    per_s = 1000.0 / bucket_ms
    medians: list[float | None] = []
    maxima: list[float | None] = []
    for bucket in range(buckets):
        values = latencies_ms.get(bucket)
        medians.append(statistics.median(values) if values else None)
        maxima.append(max(values) if values else None)
    return TimelineSeries(
        bucket_ms=bucket_ms,
        bucket_start_s=[b * bucket_ms / 1000.0 for b in range(buckets)],
        acked_per_s=[n * per_s for n in acked],
        failed_per_s=[n * per_s for n in failed],
        indeterminate_per_s=[n * per_s for n in indeterminate],
        latency_median_ms=medians,
        latency_max_ms=maxima,
        end_ms=end_ms,
    )


def render_timeline(
    history: History | Sequence[Op],
    faults: Sequence[FaultWindow],
    path: Path,
    *,
    seed: int | None = None,
) -> None:
    """Write a PNG: acknowledged sends per second (with failed / indeterminate completions)
    above send latency (median and max per bucket, log scale), sharing the time axis, with
    every fault window shaded and labelled by kind (an unhealed fault shades to the end and
    is hatched); a dotted line marks when produce recovered.

    Raises ImportError when matplotlib (a dev extra) is missing. Uses the Agg canvas
    directly, never pyplot: no backend switch, no global figure registry to leak into."""
    # Imported here, not at module level: matplotlib is a dev extra (see the module docstring).
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.transforms import blended_transform_factory
    except ImportError as exc:
        raise ImportError(
            "matplotlib is not installed (it is in raftmq's dev extra): no timeline picture"
        ) from exc

    ops = history.ops() if isinstance(history, History) else history
    series = timeline_series(ops)
    end_s = (
        max(
            series.end_ms,
            *(f.start_ms for f in faults),
            *(f.end_ms for f in faults if f.end_ms is not None),
        )
        / 1000.0
    )
    fig = Figure(figsize=(13, 7.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    rate_ax, latency_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1))
    # Step plots with "post": a bucket's value holds over the whole bucket.
    # Step plots with "post": a bucket's value holds over the whole bucket, so each series
    # repeats its last value at the end of the last bucket.
    x_s = [*series.bucket_start_s, len(series.bucket_start_s) * series.bucket_ms / 1000.0]

    def held(values: Sequence[float | None]) -> list[float]:
        # NaN (no data) leaves a gap instead of drawing a misleading zero.
        points = [math.nan if v is None else v for v in values]
        return [*points, points[-1]]

    # Markers make a lone bucket visible between gaps; too many buckets would smear them.
    marker = "." if len(x_s) <= 300 else None
    for values, color, label in (
        (series.acked_per_s, "tab:green", "acked"),
        (series.failed_per_s, "tab:red", "failed"),
        (series.indeterminate_per_s, "tab:orange", "indeterminate (info)"),
    ):
        rate_ax.step(x_s, held(values), where="post", color=color, label=label)
    rate_ax.set_ylabel(f"sends / s ({series.bucket_ms / 1000:g} s buckets)")
    rate_ax.set_ylim(bottom=0)
    rate_ax.grid(True, alpha=0.3)

    latency_series: tuple[tuple[list[float | None], str, str], ...] = (
        (series.latency_max_ms, "tab:purple", "max latency"),
        (series.latency_median_ms, "tab:blue", "median latency"),
    )
    for latency_values, color, label in latency_series:
        latency_ax.step(
            x_s,
            held(latency_values),
            where="post",
            color=color,
            label=label,
            marker=marker,
            markersize=3,
        )
    if any(v is not None for v in series.latency_max_ms):
        latency_ax.set_yscale("log")
    latency_ax.set_ylabel("acked send latency (ms, by invoke time)")
    latency_ax.set_xlabel("time since run start (s)")
    latency_ax.set_xlim(0, max(end_s, 1.0))
    latency_ax.grid(True, which="both", alpha=0.3)

    colors = _fault_colors(faults)
    label_transform = blended_transform_factory(rate_ax.transData, rate_ax.transAxes)
    for number, fault in enumerate(sorted(faults, key=lambda f: f.start_ms)):
        start_s = fault.start_ms / 1000.0
        stop_s = end_s if fault.end_ms is None else fault.end_ms / 1000.0
        for ax in (rate_ax, latency_ax):
            ax.axvspan(
                start_s,
                stop_s,
                color=colors[fault.kind],
                alpha=0.18,
                hatch="//" if fault.end_ms is None else None,
                linewidth=0,
            )
            if fault.recovered_produce_ms is not None:
                ax.axvline(
                    (fault.start_ms + fault.recovered_produce_ms) / 1000.0,
                    color=colors[fault.kind],
                    linestyle=":",
                    linewidth=1.2,
                )
        if len(faults) > TIMELINE_LABELS_MAX:
            continue  # a long run: the legend's colours name the kinds, labels would pile up
        # Staggered so that labels of close faults do not overlap; a fault near the right edge
        # is labelled leftwards from its end so that the label stays inside the panel.
        near_end = start_s > 0.8 * end_s
        rate_ax.text(
            stop_s if near_end else start_s,
            0.98 - 0.09 * (number % 3),
            f" {fault.kind}" + (" (never healed)" if fault.end_ms is None else "") + " ",
            transform=label_transform,
            fontsize=8,
            va="top",
            ha="right" if near_end else "left",
            color="black",
            clip_on=True,
            # Keeps the label legible over the throughput line.
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1.0},
        )

    handles, labels = rate_ax.get_legend_handles_labels()
    latency_handles, latency_labels = latency_ax.get_legend_handles_labels()
    handles += latency_handles
    labels += latency_labels
    for kind, color in colors.items():
        handles.append(Patch(facecolor=color, alpha=0.35, label=f"fault: {kind}"))
        labels.append(f"fault: {kind}")
    if any(f.recovered_produce_ms is not None for f in faults):
        handles.append(Line2D([], [], color="gray", linestyle=":"))
        labels.append("produce recovered")
    fig.legend(
        handles,
        labels,
        loc="outside right upper",
        fontsize=8,
        title="shaded: fault active\nhatched: never healed",
        title_fontsize=8,
    )

    acked_total = sum(1 for op in ops if op.f == "send" and op.type == "ok")
    seed_text = "" if seed is None else f" seed {seed}:"
    fig.suptitle(f"raftmq chaos run —{seed_text} {acked_total} acked sends, {len(faults)} faults")
    fig.savefig(path)


def _fault_colors(faults: Sequence[FaultWindow]) -> dict[str, str]:
    # One stable color per kind, in order of first appearance; red and green are left to the
    # throughput lines.
    palette = ("tab:gray", "tab:cyan", "tab:olive", "tab:pink", "tab:brown", "gold", "navy")
    colors: dict[str, str] = {}
    for fault in sorted(faults, key=lambda f: f.start_ms):
        if fault.kind not in colors:
            colors[fault.kind] = palette[len(colors) % len(palette)]
    return colors


def format_summary(
    result: CheckResult,
    *,
    seed: int,
    faults: Sequence[FaultWindow],
    replay_command: str,
) -> str:
    """A human summary of a checked run: faults injected, operations by outcome, every anomaly
    kind with its count and first examples, recovery times per fault kind, warnings, the
    verdict and, on failure, the seed and the exact command that replays the run."""
    verdict = "VALID" if result.valid else "INVALID"
    lines = [f"raftmq chaos check: {verdict} (seed {seed})"]

    kinds = Counter(f.kind for f in faults)
    by_kind = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
    lines.append(f"faults injected: {len(faults)}" + (f" ({by_kind})" if by_kind else ""))

    stats = result.stats
    lines.append(f"operations  {'invoke':>9} {'ok':>9} {'fail':>9} {'info':>9} {'pending':>9}")
    for f in ("send", "poll"):
        row = " ".join(
            f"{stats[f'{f}_{t}']:>9}" for t in ("invoke", "ok", "fail", "info", "pending")
        )
        lines.append(f"  {f:<9} {row}")
    lines.append(
        f"values: {stats['values_acked']} acked, {stats['values_failed']} failed, "
        f"{stats['values_indeterminate']} indeterminate "
        f"({stats['values_indeterminate_read']} of them read); "
        f"{stats['values_read']} distinct read "
        f"({stats['reads_total']} records in {stats['partitions_read']} partitions, "
        f"{stats['seeks']} seeks)"
    )

    if result.groups:
        lines.append(
            "consumer groups  deliveries (again)  commits ok/fail/info  offset reads  "
            "assignment changes (lost)  members started/crashed/closed"
        )
        for group, g in result.groups.items():
            commits = f"{g['commits_ok']}/{g['commits_fail']}/{g['commits_info']}"
            changes = f"{g['assignment_changes']} ({g['assignments_lost']})"
            members = f"{g['members_started']}/{g['members_crashed']}/{g['members_closed']}"
            lines.append(
                f"  {group:<14} {g['deliveries']:>10} ({g['redeliveries']:>5})  {commits:>20}"
                f"  {g['offset_reads_ok']:>12}  {changes:>25}  {members:>15}"
            )
    lines.append("anomalies (FAIL: makes the run invalid, warn: reported only):")
    for kind in ANOMALY_KINDS:
        count = result.counts[kind]
        mark = "FAIL" if kind in result.error_kinds else "warn"
        if not count:
            mark = "ok"
        lines.append(f"  {mark:<4} {kind:<{_KIND_WIDTH}} {count:>7}")
        for entry in result.anomalies[kind][:SUMMARY_EXAMPLES_PER_KIND]:
            lines.append(f"         - {entry['explanation']}")
        if count > SUMMARY_EXAMPLES_PER_KIND:
            lines.append(f"         ... {count - SUMMARY_EXAMPLES_PER_KIND} more in report.json")

    if result.recovery:
        lines.append(
            "recovery after faults (ms since fault start, median / max over the faults that "
            "recovered; unrecovered: produce/leader):"
        )
        lines.append(
            f"  {'kind':<28} {'count':>5}  {'produce':>17}  {'leader':>17}  {'unrecovered':>11}"
        )
        for kind, rec in result.recovery.items():
            produce = f"{_ms(rec.median_ms)} / {_ms(rec.max_ms)}"
            leader = f"{_ms(rec.leader_median_ms)} / {_ms(rec.leader_max_ms)}"
            unrecovered = f"{rec.unrecovered}/{rec.leader_unrecovered}"
            lines.append(
                f"  {kind:<28} {rec.count:>5}  {produce:>17}  {leader:>17}  {unrecovered:>11}"
            )
    if result.warnings:
        lines.append("warnings:")
        lines.extend(f"  - {warning}" for warning in result.warnings)

    if result.valid:
        lines.append("RESULT: VALID")
    else:
        failed = ", ".join(f"{kind} {n}" for kind, n in result.errors.items())
        lines.append(f"RESULT: INVALID ({failed})")
        lines.append(f"replay this run (seed {seed}):")
        lines.append(f"  {replay_command}")
    return "\n".join(lines) + "\n"


def format_campaign(campaign: dict[str, Any]) -> str:
    """The human summary of `campaign_figures`: one line per run, then recovery per kind."""
    lines = [
        f"campaign: {campaign['valid']} of {campaign['runs']} runs valid"
        + (f", aborted seeds {campaign['aborted_seeds']}" if campaign["aborted_seeds"] else ""),
        f"  {'seed':>8} {'result':>7} {'sends ok':>9} {'fail':>5} {'info':>5} {'faults':>6}"
        f" {'delivered':>9} {'commits':>7} {'rebal.':>6} {'crashed':>7}  anomalies",
    ]
    for run in campaign["per_run"]:
        result = "VALID" if run["ok"] else "FAILED"
        found = ", ".join(f"{k} {n}" for k, n in run["anomalies"].items()) or "none"
        g = run.get("groups", {})
        lines.append(
            f"  {run['seed']:>8} {result:>7} {run['send_ok']:>9} {run['send_fail']:>5} "
            f"{run['send_info']:>5} {sum(run['faults'].values()):>6} "
            f"{g.get('deliveries', 0):>9} {g.get('commits_ok', 0):>7} "
            f"{g.get('assignment_changes', 0):>6} {g.get('members_crashed', 0):>7}  {found}"
        )
    lines.append(
        f"  total: {campaign['send_ok']} sends ok, {campaign['send_fail']} failed, "
        f"{campaign['send_info']} indeterminate, {campaign['writer_retries']} resent by the "
        f"Writers, {campaign['faults']} faults; anomalies: "
        + (", ".join(f"{k} {n}" for k, n in campaign["anomalies"].items()) or "none")
    )
    groups = campaign.get("groups", {})
    if groups.get("groups"):
        group_anomalies = campaign.get("group_anomalies", {})
        lines.append(
            f"  groups: {groups.get('deliveries', 0)} deliveries ({groups.get('redeliveries', 0)}"
            f" again), {groups.get('commits_ok', 0)} commits ok / {groups.get('commits_fail', 0)}"
            f" failed / {groups.get('commits_info', 0)} unknown, "
            f"{groups.get('offset_reads_ok', 0)} offset reads, "
            f"{groups.get('assignment_changes', 0)} assignment changes seen "
            f"({groups.get('assignments_lost', 0)} with partitions lost), "
            f"{groups.get('members_crashed', 0)} members SIGKILLed (restarted "
            f"{groups.get('restarts_same_instance', 0)} x same instance id, "
            f"{groups.get('restarts_new_instance', 0)} x new), "
            f"{groups.get('zombie_overlaps', 0)} zombie overlaps allowed; group anomalies: "
            + (", ".join(f"{k} {n}" for k, n in group_anomalies.items() if n) or "none")
        )
        if campaign.get("groups_undrained_seeds"):
            lines.append(f"  groups did not drain in seeds {campaign['groups_undrained_seeds']}")
    lines.append("recovery over all faults (ms since fault start, median / max):")
    lines.append(f"  {'kind':<28} {'count':>5}  {'produce':>13}  {'leader':>13}")
    for kind, rec in campaign["recovery"].items():
        produce = f"{_ms(rec['median_ms'])} / {_ms(rec['max_ms'])}"
        leader = f"{_ms(rec['leader_median_ms'])} / {_ms(rec['leader_max_ms'])}"
        lines.append(f"  {kind:<28} {rec['count']:>5}  {produce:>13}  {leader:>13}")
    return "\n".join(lines) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def write_report(
    result: CheckResult,
    *,
    out_dir: Path,
    seed: int,
    history: History | Sequence[Op],
    faults: Sequence[FaultWindow],
    replay_command: str,
    config: dict[str, Any],
) -> Path:
    """Write `history.jsonl`, `timeline.png` (skipped, with the reason in the report, when
    matplotlib is missing) and, last, `report.json` (verdict, seed, replay command, config,
    summary, check result, faults) into `out_dir` (created if needed). Returns the path of
    `report.json`; its presence means the report is complete. `config` values that JSON
    cannot encode are written as their `str()`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ops = history.ops() if isinstance(history, History) else history
    write_jsonl(ops, out_dir / HISTORY_FILE)

    timeline_file: str | None = TIMELINE_FILE
    timeline_skipped_reason: str | None = None
    try:
        render_timeline(ops, faults, out_dir / TIMELINE_FILE, seed=seed)
    except ImportError as exc:
        timeline_file = None
        timeline_skipped_reason = str(exc)

    summary = format_summary(result, seed=seed, faults=faults, replay_command=replay_command)
    if timeline_skipped_reason is not None:
        summary += f"timeline: skipped, {timeline_skipped_reason}\n"
    report = {
        "valid": result.valid,
        "seed": seed,
        "replay_command": replay_command,
        "config": config,
        "summary": summary,
        "files": {"history": HISTORY_FILE, "timeline": timeline_file},
        "timeline_skipped_reason": timeline_skipped_reason,
        "faults": [fault.to_json_dict() for fault in faults],
        "result": result.to_json_dict(),
    }
    report_path = out_dir / REPORT_FILE
    # Written to a temporary name and renamed: a report.json is never half written.
    partial_path = out_dir / (REPORT_FILE + ".partial")
    partial_path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    partial_path.replace(report_path)
    return report_path
