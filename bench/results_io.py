"""Shared by the benchmarks: print the result as one JSON line and keep it in bench/results/."""

from __future__ import annotations

import json
from pathlib import Path


def publish(result: dict) -> dict:
    out = Path(__file__).parent / "results" / f"{result['name']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result
