"""The soak test's report (benchmarks/soak.py): the memory slope, the server log's problems, the summary."""

import argparse
import os
import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from benchmarks.load import percentiles, rss_slope
from benchmarks.reloads import SWAPPED
from benchmarks.soak_mix import MIX

if TYPE_CHECKING:
    from benchmarks.soak import SoakTally


# ---- report ----------------------------------------------------------------------------------------


def slope_after(rss: list[tuple[float, float]], warmup: float) -> tuple[float, int]:
    """Least-squares RSS slope in MB per 10 minutes over the samples at or after `warmup` seconds
    (load.py's `rss_slope`, which gives MB per minute), and how many samples it used."""
    after = [(t, int(mb * 2**20)) for t, mb in rss if t >= warmup]
    return rss_slope(after) * 10, len(after)


EXPECTED_LOG = "checkpoint rejected file=corrupt.safetensors"  # the reloader's corrupt file, each time
LOG_RECORD = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:,.]+ )?(CRITICAL|ERROR|WARNING)\b:?")
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b")


def server_log_problems(log: str) -> dict[str, Any]:
    """What the server's log (level warning) reports: its error and warning records (but for the
    refusals of the reloader's corrupt file, counted apart), and the distinct exceptions that end
    its tracebacks, with counts."""
    records: Counter[str] = Counter()
    examples: list[str] = []
    exceptions: Counter[str] = Counter()
    expected = 0
    for line in log.splitlines():
        record = LOG_RECORD.match(line)
        if record is not None:
            if EXPECTED_LOG in line:
                expected += 1
                continue
            records[record.group(1)] += 1
            if len(examples) < 10:
                examples.append(line[:300])
        elif EXCEPTION_LINE.match(line):
            exceptions[line[:200]] += 1
    return {
        "errors": records["ERROR"] + records["CRITICAL"],
        "warnings": records["WARNING"],
        "tracebacks": log.count("Traceback (most recent call last)"),
        "examples": examples,
        "exceptions": dict(exceptions.most_common(10)),
        "corrupt_file_rejections": expected,
    }


def summarise(tally: "SoakTally", args: argparse.Namespace, exit_code: int, log: str) -> dict[str, Any]:
    slope, used = slope_after(tally.rss, args.warmup)
    floor_slope, _ = slope_after(tally.rss_floor, args.warmup)
    hostile = {kind.label for kind in MIX if kind.hostile}
    every = [x for v in tally.latencies.values() for x in v]
    return {
        "duration_s": args.duration,
        "clients": args.clients,
        "think_s": args.think,
        "reload_every_s": args.reload_every,
        "sample_every_s": args.sample_every,
        "warmup_s": args.warmup,
        "seed": args.seed,
        "only": args.only,
        "cpus": len(os.sched_getaffinity(0)),
        "requests": tally.requests,
        "requests_per_second": tally.requests / args.duration,
        "legal_requests": sum(len(v) for k, v in tally.latencies.items() if k not in hostile),
        "hostile_requests": sum(len(v) for k, v in tally.latencies.items() if k in hostile),
        "latency": percentiles(every) if every else {},
        "by_kind": {
            label: {
                "requests": len(v),
                "hostile": label in hostile,
                "failures": tally.failed_by_kind[label],
                "statuses": {str(code): count for code, count in sorted(tally.statuses[label].items())},
                **percentiles(v),
            }
            for label, v in sorted(tally.latencies.items())
        },
        "legal_failures": tally.legal_failed,
        "legal_failure_examples": tally.failures[:10],
        "hostile_failures": tally.hostile_failed,
        "hostile_failure_examples": tally.hostile_failures[:10],
        "reloads": tally.reloads,
        "reload_failures": len(tally.reload_failures),
        "reload_failure_examples": tally.reload_failures[:10],
        "versions_served": len(tally.versions_seen),
        "rss_mb": [[round(t, 1), round(mb, 2)] for t, mb in tally.rss],
        "rss_floor_mb": [[round(t, 1), round(mb, 2)] for t, mb in tally.rss_floor],
        "rss_slope_mb_per_10min": slope,
        "rss_floor_slope_mb_per_10min": floor_slope,
        "rss_slope_samples": used,
        "max_slope_mb_per_10min": args.max_slope_mb_per_10min,
        "server_exit_code": exit_code,
        "server_died_during_run": tally.server_died,
        "server_log": server_log_problems(log),
    }


def print_report(result: dict[str, Any]) -> None:
    print()
    print(
        f"{result['clients']} clients for {result['duration_s']:g} s, reload every "
        f"{result['reload_every_s']:g} s, {result['cpus']} CPUs"
    )
    head = f"{'kind':<24} {'requests':>9} {'failed':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}  statuses"
    print(head)
    print("-" * len(head))
    for label, row in result["by_kind"].items():
        statuses = " ".join(f"{code}×{count}" for code, count in row["statuses"].items())
        print(
            f"{label:<24} {row['requests']:>9,} {row['failures']:>7} {row['p50_ms']:>9.1f} "
            f"{row['p99_ms']:>9.1f} {row['max_ms']:>9.1f}  {statuses}"
        )
    total = result["latency"]
    if total:  # none when the server died at once
        print(
            f"{'all':<24} {result['requests']:>9,} {'':>7} {total['p50_ms']:>9.1f} "
            f"{total['p99_ms']:>9.1f} {total['max_ms']:>9.1f}"
        )
    print("(statuses: HTTP status × requests; 0: no answer, a transport error)")
    print(
        f"requests: {result['requests']:,} ({result['requests_per_second']:.1f}/s): "
        f"{result['legal_requests']:,} legal, {result['hostile_requests']:,} hostile"
    )
    print(f"failed legal requests: {result['legal_failures']}")
    for failure in result["legal_failure_examples"][:5]:
        print(f"  {failure}")
    print(f"failed hostile requests (5xx or no answer): {result['hostile_failures']}")
    for failure in result["hostile_failure_examples"][:5]:
        print(f"  {failure}")
    print(
        f"reloads: {result['reloads']}, failed: {result['reload_failures']}; "
        f"versions of {SWAPPED} served: {result['versions_served']}"
    )
    for failure in result["reload_failure_examples"][:5]:
        print(f"  {failure}")
    series = ", ".join(f"{t:.0f} s {mb:.1f}" for t, mb in result["rss_mb"])
    print(f"server RSS (MB) by time: {series}")
    floors = ", ".join(f"{mb:.1f}" for _, mb in result["rss_floor_mb"])
    print(f"lowest RSS (MB) read each second over each interval: {floors}")
    verdict = "ok" if result["rss_slope_mb_per_10min"] <= result["max_slope_mb_per_10min"] else "TOO STEEP"
    print(
        f"RSS slope after {result['warmup_s']:g} s of warm-up: {result['rss_slope_mb_per_10min']:+.3f} MB "
        f"per 10 min over {result['rss_slope_samples']} samples "
        f"(limit {result['max_slope_mb_per_10min']:g}: {verdict}); "
        f"slope of the lowest readings: {result['rss_floor_slope_mb_per_10min']:+.3f} MB per 10 min"
    )
    log = result["server_log"]
    print(
        f"server exit code on SIGTERM: {result['server_exit_code']}; its log: {log['errors']} errors, "
        f"{log['warnings']} warnings, {log['tracebacks']} tracebacks "
        f"(besides {log['corrupt_file_rejections']} refusals of the reloader's corrupt file)"
    )
    for line in log["examples"][:5]:
        print(f"  {line}")
    for line, count in log["exceptions"].items():
        print(f"  {count} × {line}")


def passed(result: dict[str, Any]) -> bool:
    return (
        not result["server_died_during_run"]
        and result["legal_failures"] == 0
        and result["hostile_failures"] == 0
        and result["reload_failures"] == 0
        and result["server_exit_code"] == 0
        and result["rss_slope_mb_per_10min"] <= result["max_slope_mb_per_10min"]
    )
