"""Run the benchmarks, print the table, write ``benchmarks/results/latest.md`` and ``latest.json``.

    python -m benchmarks.run                    # all of them (make bench), ~10 minutes
    python -m benchmarks.run throughput polling # some of them
    python -m benchmarks.run --quick            # smaller N: a smoke check (~2-3 minutes)

Names: throughput, polling, memory, overhead, sensor, emulator, claims, gallery, gallery_scale,
deferred, emulator_load, ceiling, executor, planned_events, candidates, shards. A full
run (all benchmarks, not ``--quick``) writes ``latest.*``; any other run writes ``partial.*`` (not
committed), unless ``--out`` says where.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import (
    candidates,
    ceiling,
    claims,
    deferred,
    emulator_capacity,
    emulator_load,
    executor,
    gallery,
    gallery_scale,
    memory,
    overhead,
    planned_events,
    polling,
    sensor,
    shards,
    throughput,
)
from benchmarks._common import BenchResult, fmt, machine_description

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

BENCHMARKS: dict[str, Callable[..., BenchResult]] = {
    throughput.NAME: throughput.run,
    polling.NAME: polling.run,
    memory.NAME: memory.run,
    overhead.NAME: overhead.run,
    sensor.NAME: sensor.run,
    emulator_capacity.NAME: emulator_capacity.run,
    claims.NAME: claims.run,
    gallery.NAME: gallery.run,
    gallery_scale.NAME: gallery_scale.run,
    deferred.NAME: deferred.run,
    emulator_load.NAME: emulator_load.run,
    ceiling.NAME: ceiling.run,
    executor.NAME: executor.run,
    planned_events.NAME: planned_events.run,
    candidates.NAME: candidates.run,
    shards.NAME: shards.run,
}


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**MISSED**", None: ""}[met]


def render_markdown(
    machine: dict[str, Any], results: list[BenchResult], quick: bool, elapsed: float
) -> str:
    lines = ["# zimage-dagster benchmarks", ""]
    lines.append(
        "Every figure is measured against a baseline taken in the same invocation; read the ratio "
        "column (this machine is small and shared, so absolute times drift from run to run)."
    )
    lines.append("")
    lines.append("| machine | |")
    lines.append("| --- | --- |")
    for key, value in machine.items():
        lines.append(f"| {key} | {value} |")
    lines.append(f"| mode | {'quick (smaller N)' if quick else 'full'} |")
    lines.append(f"| total time | {elapsed:.0f} s |")
    lines.append("")
    lines.append("## Summary")
    lines.append("")
    lines.append("| benchmark | figure | value | baseline (same run) | ratio | target | verdict |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for res in results:
        for row in res.rows:
            baseline = (
                f"{fmt(row.baseline)} {row.unit} ({row.baseline_label})"
                if row.baseline is not None
                else row.baseline_label
            )
            lines.append(
                f"| {res.name} | {row.metric} | {fmt(row.value)} {row.unit} | {baseline} | "
                f"{fmt(row.ratio)} | {row.target} | {_verdict(row.met)} |"
            )
    for res in results:
        lines.append("")
        lines.append(f"## {res.title}")
        lines.append("")
        lines.append(f"({res.elapsed_s:.0f} s)")
        lines.append("")
        for note in res.notes:
            lines.append(f"- {note}")
        for section in res.sections:
            lines.append("")
            lines.append(section)
    lines.append("")
    return "\n".join(lines)


def render_table(results: list[BenchResult]) -> str:
    out = []
    for res in results:
        out.append(f"\n{res.title}  ({res.elapsed_s:.0f} s)")
        for row in res.rows:
            base = f"{fmt(row.baseline)} ({row.baseline_label})" if row.baseline is not None else ""
            ratio = f"ratio {fmt(row.ratio)}" if row.ratio is not None else ""
            verdict = _verdict(row.met).replace("*", "")
            out.append(
                f"  {row.metric}: {fmt(row.value)} {row.unit}  vs {base}  {ratio}  "
                f"{row.target} {verdict}".rstrip()
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="smaller N: a smoke check")
    parser.add_argument("--out", help="file stem for the results (default: results/latest)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    full = not args.quick and names == list(BENCHMARKS)
    stem = args.out or os.path.join(RESULTS, "latest" if full else "partial")

    machine = machine_description()
    print(f"machine: {machine}", flush=True)
    context: dict[str, Any] = {}
    results: list[BenchResult] = []
    failed = False
    started = time.perf_counter()
    for name in names:
        print(f"\n== {name}{' (quick)' if args.quick else ''} ...", flush=True)
        begin = time.perf_counter()
        try:
            res = BENCHMARKS[name](quick=args.quick, context=context)
        except Exception:
            failed = True
            text = traceback.format_exc()
            print(text, file=sys.stderr, flush=True)
            res = BenchResult(name, f"{name}: FAILED")
            res.notes.append("The benchmark raised:\n\n```\n" + text.strip() + "\n```")
        res.elapsed_s = time.perf_counter() - begin
        results.append(res)
        print(render_table([res]), flush=True)
    elapsed = time.perf_counter() - started

    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    markdown = render_markdown(machine, results, args.quick, elapsed)
    with open(stem + ".md", "w") as fh:
        fh.write(markdown)
    with open(stem + ".json", "w") as fh:
        json.dump(
            {
                "machine": machine,
                "quick": args.quick,
                "elapsed_s": round(elapsed, 1),
                "benchmarks": [r.to_dict() for r in results],
            },
            fh,
            indent=2,
            default=str,
        )
    print(f"\n{len(results)} benchmark(s) in {elapsed:.0f} s; written to {stem}.md and .json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
