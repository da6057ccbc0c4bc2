"""videofetchd benchmarks (``make bench``): videofetchd against plain yt-dlp, on 127.0.0.1 only.

    .venv/bin/python bench/run.py                      # everything (~10 min)
    .venv/bin/python bench/run.py --only small --jobs 200 --repeat 5
    .venv/bin/python bench/run.py --only bandwidth
    .venv/bin/python bench/run.py --only memory --memory-jobs 3000
    .venv/bin/python bench/run.py --only stall

Each benchmark prints its tables; all tables go to bench/results/latest.md as markdown.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import psutil  # noqa: E402

import bandwidth  # noqa: E402
import memory  # noqa: E402
import small  # noqa: E402
import stall  # noqa: E402
from common import RESULTS_DIR, ensure_subreaper, ytdlp_version  # noqa: E402

BENCHES = {"small": small, "bandwidth": bandwidth, "memory": memory, "stall": stall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", choices=sorted(BENCHES),
                   help="run only this benchmark (repeatable; default: all)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directories")
    p.add_argument("--output", default=os.path.join(RESULTS_DIR, "latest.md"), help="markdown results file")
    for mod in BENCHES.values():
        mod.add_arguments(p)
    args = p.parse_args(argv)
    subreaper = ensure_subreaper()
    chosen = args.only or list(BENCHES)
    header = (f"videofetchd benchmarks, {datetime.datetime.now().isoformat(timespec='seconds')}; "
              f"{platform.node()}: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total >> 20} MiB RAM, "
              f"Python {platform.python_version()}, yt-dlp {ytdlp_version()}"
              + ("" if subreaper else "; WARNING: not a subreaper, tree CPU undercounts orphans"))
    print(header, flush=True)
    sections = [f"# videofetchd benchmarks\n\n{header}\n"]
    for name in chosen:
        print(f"\n--- {name} ---", flush=True)
        t0 = time.monotonic()
        tables = BENCHES[name].run(args)
        for t in tables:
            print("\n" + t.text(), flush=True)
            sections.append(t.markdown())
        print(f"({name}: {time.monotonic() - t0:.0f}s)", flush=True)
        _write(args.output, sections)  # after each benchmark, so a later failure loses nothing
    print(f"\nmarkdown: {args.output}")
    return 0


def _write(path: str, sections: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(sections))


if __name__ == "__main__":
    sys.exit(main())
