"""Turning the measurements into a table, ratios against the targets, and text."""

from __future__ import annotations

from typing import Any

#: The design's performance targets.
TARGETS = {
    "vs_apscheduler": 5.0,
    "vs_ceiling": 0.5,
    "lateness_p99_ms": 25.0,
    "poll_growth": 1.5,
}

Row = tuple[str, str, str, str, str]


def mode_name(mode: str) -> str:
    return "run_pending() loop" if mode == "pending" else "start()"


def best_run(
    runs: list[dict[str, Any]], db: str, processes: int
) -> dict[str, Any] | None:
    """The faster of the modes measured for one database and process count."""
    matching = [r for r in runs if r["database"] == db and r["processes"] == processes]
    return max(matching, key=lambda r: r["jobs_per_s"], default=None)


def duplicates(runs: list[dict[str, Any]]) -> int:
    """Runs recorded twice, run but not recorded, or recorded done without a run."""
    total = 0
    for run in runs:
        checks = run["checks"]
        total += checks["duplicate_keys"] + checks["multiple_successes"]
        total += checks.get("done_without_success", 0)
        total += max(checks.get("executions_minus_successes", 0), 0)
    return total


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare the measurements with the design's performance targets."""
    found: list[tuple[str, float, str, bool]] = []
    throughput = results.get("throughput", [])
    aps = {r["database"]: r for r in results.get("apscheduler", [])}
    one = best_run(throughput, "postgresql", 1)
    if one and aps.get("postgresql", {}).get("jobs_per_s"):
        value = one["jobs_per_s"] / aps["postgresql"]["jobs_per_s"]
        found.append(
            (
                "jobsched 1 process / APScheduler 3, PostgreSQL",
                value,
                ">= 5",
                value >= TARGETS["vs_apscheduler"],
            )
        )
    four = best_run(throughput, "postgresql", 4)
    ceiling = results.get("ceiling")
    if four and ceiling:
        value = four["jobs_per_s"] / ceiling["jobs_per_s"]
        found.append(
            (
                "jobsched 4 processes / raw-SQL ceiling, PostgreSQL",
                value,
                ">= 0.5",
                value >= TARGETS["vs_ceiling"],
            )
        )
    for run in results.get("lateness", []):
        p99 = run["recorded"]["p99_ms"]
        if p99 is not None:
            found.append(
                (
                    f"start lateness p99 (ms), {run['processes']} idle process(es)",
                    p99,
                    "< 25",
                    p99 < TARGETS["lateness_p99_ms"],
                )
            )
    poll = results.get("poll")
    if poll:
        sizes = poll["sizes"]
        found.append(
            (
                f"poll cost, {sizes[-1]['rows']:,} / {sizes[0]['rows']:,} rows",
                poll["poll_ratio"],
                "< 1.5",
                poll["poll_ratio"] < TARGETS["poll_growth"],
            )
        )
    if throughput:
        count = duplicates(throughput)
        found.append(("duplicate runs, all jobsched drains", count, "0", count == 0))
    return [
        {"measure": m, "value": round(v, 3), "target": t, "met": bool(ok)}
        for m, v, t, ok in found
    ]


def _drained(run: dict[str, Any]) -> str:
    if run["drained"]:
        return "drained all"
    return f"{run['completed']:,} of {run['jobs']:,} in the {run['cap_s']:.0f} s cap"


def _throughput_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for run in results.get("throughput", []):
        per = run.get("per_job", {})
        drained = _drained(run)
        detail = (
            f"{mode_name(run['mode'])}; {drained}; per job: "
            f"{per.get('statements', '?')} statements in "
            f"{per.get('dbapi_calls', '?')} DBAPI calls, {per.get('commits', '?')} "
            f"commits, {per.get('cpu_ms', '?')} ms worker CPU"
        )
        stranded = run["checks"]["statuses"].get("running", 0)
        if stranded:
            detail += f"; {stranded} left running after stop()"
        rows.append(
            (
                "throughput, jobsched (jobs/s)",
                run["database"],
                str(run["processes"]),
                f"{run['jobs_per_s']:,.0f}",
                detail,
            )
        )
    for run in results.get("apscheduler", []):
        drained = _drained(run)
        rows.append(
            (
                "throughput, APScheduler 3 (jobs/s)",
                run["database"],
                "1",
                f"{run['jobs_per_s']:,.0f}",
                drained,
            )
        )
    ceiling = results.get("ceiling")
    if ceiling:
        rows.append(
            (
                "raw-SQL ceiling (jobs/s)",
                "postgresql",
                f"{ceiling['clients']} clients",
                f"{ceiling['jobs_per_s']:,.0f}",
                (
                    f"pgbench, batches of {ceiling['batch']}, {ceiling['seconds']} s, "
                    f"{ceiling['latency_ms']} ms per batch"
                ),
            )
        )
    return rows


def _other_rows(results: dict[str, Any]) -> list[Row]:
    rows = []
    for run in results.get("lateness", []):
        rec, obs = run["recorded"], run["observed"]
        rows.append(
            (
                "start lateness p50/p99/max (ms)",
                run["database"],
                str(run["processes"]),
                f"{rec['p50_ms']} / {rec['p99_ms']} / {rec['max_ms']}",
                (
                    f"{run['jobs']} jobs every {run['every_s']:g} s, {rec['count']} "
                    f"runs; as seen inside the job: {obs['p50_ms']} / "
                    f"{obs['p99_ms']} / {obs['max_ms']}"
                ),
            )
        )
    idle = results.get("idle")
    if idle:
        scans = idle["server"].get("jobs_table_scans_per_s", "?")
        rows.append(
            (
                "idle cost (statements/s)",
                idle["database"],
                str(idle["processes"]),
                f"{idle['statements_per_s']}",
                (
                    f"{idle['statements_per_s_per_process']} per process; "
                    f"{idle['waiting_jobs']:,} jobs not due; jobs-table scans "
                    f"counted by the server: {scans}/s"
                ),
            )
        )
    poll = results.get("poll")
    if poll:
        rows.extend(
            (
                f"poll / claim of {poll['batch_size']} (ms)",
                poll["database"],
                "1",
                f"{size['poll_ms_median']} / {size['claim_ms_median']}",
                (
                    f"{size['rows']:,} rows, {size['due']:,} due (medians); poll "
                    f"query on the server {size['poll_server_ms_median']} ms"
                ),
            )
            for size in poll["sizes"]
        )
    return rows


def table_rows(results: dict[str, Any]) -> list[Row]:
    """The summary table: (measure, database, processes, result, detail)."""
    return _throughput_rows(results) + _other_rows(results)


HEADERS: Row = ("Measure", "DB", "Procs", "Result", "Detail")


def text_table(rows: list[Row]) -> str:
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(4)]

    def line(row: Row) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        return "  ".join([*cells, row[4]])

    return "\n".join([line(HEADERS), "-" * 100, *(line(r) for r in rows)])


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def machine_text(report: dict[str, Any]) -> str:
    machine = report["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    lines = [
        f"CPU        {machine['cpu']}, {machine['cores']} cores",
        f"Python     {machine['python']} ({machine['platform']})",
        f"Packages   {packages}",
        f"Source     {machine.get('source')}",
    ]
    for name, info in machine["servers"].items():
        settings = ", ".join(f"{k}={v}" for k, v in info.items() if k != "version")
        lines.append(f"{name:<10} {info.get('version')} ({settings})")
    start = machine["load_average_at_start"]
    end = report.get("load_average_at_end")
    lines.append(f"Load avg   {_load(start)} at start, {_load(end)} at end")
    return "\n".join(lines)


def _load(values: Any) -> str:
    if not values:
        return "?"
    return " ".join(f"{v:.2f}" for v in values)


def ratios_text(found: list[dict[str, Any]]) -> str:
    lines = []
    for ratio in found:
        verdict = "met" if ratio["met"] else "NOT MET"
        lines.append(
            f"{ratio['measure']:<58} {ratio['value']:>9}  "
            f"(target {ratio['target']}) {verdict}"
        )
    return "\n".join(lines)


#: Printed under the targets of a ``--quick`` run.
QUICK_NOTE = (
    "Quick run: drains of 5,000 jobs last well under a second and the ceiling\n"
    "runs for 5 s, so start-up and noise weigh on every ratio. It shows that\n"
    "everything runs; judge the targets on a full run."
)


def full_text(report: dict[str, Any]) -> str:
    parts = [
        "Machine",
        _indent(machine_text(report)),
        "",
        text_table(report["table"]),
        "",
        "Targets",
        _indent(ratios_text(report["ratios"])),
    ]
    if report.get("mode") == "quick":
        parts += ["", QUICK_NOTE]
    if report["errors"]:
        parts += ["", "Failed steps: " + ", ".join(report["errors"])]
    return "\n".join(parts)


def full_markdown(report: dict[str, Any]) -> str:
    ratio_rows = [
        (r["measure"], str(r["value"]), r["target"], "met" if r["met"] else "NOT MET")
        for r in report["ratios"]
    ]
    ratio_table = ["| Ratio | Measured | Target | |", "|---|---|---|---|"]
    ratio_table += ["| " + " | ".join(r) + " |" for r in ratio_rows]
    return "\n".join(
        [
            "```",
            machine_text(report),
            "```",
            "",
            markdown_table(report["table"]),
            "",
            *ratio_table,
            *(["", QUICK_NOTE] if report.get("mode") == "quick" else []),
        ]
    )


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
