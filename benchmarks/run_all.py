"""`make bench`: run every benchmarks/bench_*.py and collect their sections into docs/benchmarks.md.

Each bench script prints one markdown section on stdout (starting with a `## ` heading and naming the
command that made it). Run one with `make bench ONLY=rtl` (matches bench_rtl.py).
"""

import argparse
import os
import pathlib
import platform
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--only", default="", help="run only bench_<ONLY>.py; other sections are kept")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem == f"bench_{args.only}"]
        if not scripts:
            print(f"no benchmarks/bench_{args.only}.py", file=sys.stderr)
            return 2
    sections = {}
    if out.exists():
        # Keep sections of benches not run this time, so `--only` updates one part.
        current = None
        for line in out.read_text().splitlines(keepends=True):
            if line.startswith("<!-- bench: "):
                current = line.split()[2]
                sections[current] = ""
            if current:
                sections[current] += line
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True)
        took = time.perf_counter() - t0
        sys.stderr.write(r.stderr[-4000:])
        body = r.stdout.strip() + "\n"
        if r.returncode:
            failed += 1
            body += f"\n**This benchmark failed (exit {r.returncode}).** Last lines of its output:\n\n```\n"
            body += "\n".join(r.stderr.strip().splitlines()[-15:]) + "\n```\n"
        sections[script.stem] = (f"<!-- bench: {script.stem} -->\n{body}\n"
                                 f"_`python benchmarks/{script.name}` took {took:.0f} s on "
                                 f"{time.strftime('%Y-%m-%d')}._\n\n")
        print(body)
    head = ("# Benchmarks\n\nMeasured by `make bench` (benchmarks/run_all.py runs every benchmarks/bench_*.py).\n"
            f"Machine: {machine()}. The machine is shared and noisy: compare ratios measured in one run.\n\n")
    out.write_text(head + "".join(sections[k] for k in sorted(sections)))
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
