"""Joins the result files of one experiment into one file.

    .venv/bin/python -m benchmarks.merge_results OUT IN [IN ...]

Result files of ``digits.py`` of one budget (seeds run in blocks) become one file with every run and
the summary over all of them (``digits.joined``; ``digits.py`` itself adds a new block to the file its
``--out`` names). Any other result files become the ``parts`` of one document, in the order given:
the same experiment run with other settings (worker counts, start-up times, machines).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import digits
from benchmarks.metrics import write_result


def is_digits_study(document: dict[str, Any]) -> bool:
    runs = document.get("runs")
    return "budget" in document and isinstance(runs, list) and all("contender" in r for r in runs)


def merged(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if all(is_digits_study(d) for d in documents):
        return digits.joined(documents)
    parts = [p for d in documents for p in (d["parts"] if set(d) == {"parts"} else [d])]
    return {"parts": parts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("inputs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    document = merged([json.loads(p.read_text()) for p in args.inputs])
    write_result(args.out, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
