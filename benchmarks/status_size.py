"""How large a trial's HPOTrial status grows with its report rate, with the SDK's thinning and without.

    .venv/bin/python -m benchmarks.status_size --reports-per-epoch 1 10 100 1000 \
        --out benchmarks/results/status_size.json

One run of R epochs (90 by default, rungs 10 and 30 as a study with minimum resource 10 and eta 3
has) reports ``--reports-per-epoch`` times an epoch, each report with one extra (a loss), as a
trainer that reports per step does. The reports go through the SDK's background sender
(hpo_trial.sending.BackgroundReporter: Urgency for the reports that go out at once, Thinning for the
rest, the latest left unwritten written at its flush) into a transport that records what it is
given, or, for the peer, are all written as they come (the SDK before thinning, and any report
file). Reported per rate: the reports made, the entries in
``status.reports`` and their JSON size at the end of the run, and whether every report that can
change a decision (the first two, the first at or past each rung and at R) was written. A write of
the HPOTrial moves the whole object through the API server, etcd and every watcher, and etcd
refuses objects over about 1.5 MB.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpo_trial.reporting import Reporter
from hpo_trial.sending import DEFAULT_STATUS_POINTS, BackgroundReporter, Thinning, Urgency

JSON = dict[str, Any]
ETCD_LIMIT_BYTES = 1_572_864  # etcd's default request size limit, which bounds an object
RESULTS = Path(__file__).resolve().parent / "results" / "status_size.json"


class Recorded:
    """A transport that keeps what it is given: what the HPOTrial status would hold."""

    def __init__(self) -> None:
        self.reports: list[JSON] = []

    def send(self, report: Mapping[str, Any], *, timeout: float) -> None:
        self.reports.append(dict(report))

    def describe(self) -> str:
        return "recorded"


def run(per_epoch: int, max_resource: int, rungs: tuple[float, ...], points: int, thin: bool) -> JSON:
    """One run's reports through the SDK's sender, thinned (``thin``) or not; what the status holds."""
    # An Urgency counts the reports it has seen: the sender's own, and a second for the check here.
    urgency = Urgency(rung_levels=rungs, last_resource=float(max_resource))
    judged = Urgency(rung_levels=rungs, last_resource=float(max_resource))
    thinning = Thinning(spacing=max_resource / points) if thin else Thinning()
    transport = Recorded()
    stamps = itertools.count(1_800_000_000)  # one second a report: sizes that do not vary by run
    reporter = Reporter(transport, clock=lambda: float(next(stamps)))
    sender = BackgroundReporter(reporter, urgent=urgency, thinning=thinning)
    urgent_seqs: list[int] = []
    total = per_epoch * max_resource
    for seq in range(total):
        resource = (seq + 1) / per_epoch
        value = 1.0 - math.exp(-resource / 30.0)
        if judged(resource):
            urgent_seqs.append(seq)
        sender.report(resource, value, loss=1.0 - value)
    if not sender.flush(timeout=60):
        raise RuntimeError("the sender did not flush within 60 s")
    written = sorted(transport.reports, key=lambda r: r["seq"])
    size = len(json.dumps(written, separators=(",", ":")))
    seqs = {r["seq"] for r in written}
    return {
        "reports": total,
        "entries": len(written),
        "bytes": size,
        "share_of_etcd_limit": round(size / ETCD_LIMIT_BYTES, 4),
        "decision_reports_written": all(s in seqs for s in urgent_seqs),
        "last_written": (total - 1) in seqs,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports-per-epoch", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--max-resource", type=int, default=90)
    parser.add_argument("--rungs", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--points", type=int, default=DEFAULT_STATUS_POINTS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    rows = []
    for per_epoch in args.reports_per_epoch:
        thinned = run(per_epoch, args.max_resource, tuple(args.rungs), args.points, thin=True)
        every = run(per_epoch, args.max_resource, tuple(args.rungs), args.points, thin=False)
        rows.append(
            {
                "reports_per_epoch": per_epoch,
                "thinned": thinned,
                "every_report": every,
                "bytes_ratio": round(thinned["bytes"] / every["bytes"], 4),
            }
        )
        print(
            f"{per_epoch:>5}/epoch: {thinned['entries']:>6} entries {thinned['bytes']:>9} B thinned; "
            f"{every['entries']:>6} entries {every['bytes']:>9} B every report",
            flush=True,
        )
    result = {
        "command": "python -m benchmarks.status_size " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"cpus": os.cpu_count()},
        "run": {"max_resource": args.max_resource, "rungs": args.rungs, "points": args.points},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
