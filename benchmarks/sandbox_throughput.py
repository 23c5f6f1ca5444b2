"""Programs per second through the sandbox (``unipo.rewards.sandbox``): a small passing program
(a function and two asserts), run N times with 1 and 2 server workers.

    PYTHONPATH=src nice python benchmarks/sandbox_throughput.py --n 300
"""

from __future__ import annotations

import argparse
import json
import time

from unipo.rewards.sandbox import Sandbox

PROGRAM = "def f(x):\n    return 3*x+5\n"
TESTS = ["assert f(0) == 5", "assert f(2) == 11"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    args = p.parse_args()
    out = {}
    for workers in (1, 2):
        box = Sandbox(workers=workers)
        box.run_many([("python", {"code": PROGRAM, "tests": TESTS})] * workers)  # start the servers
        t0 = time.perf_counter()
        results = box.run_many([("python", {"code": PROGRAM, "tests": TESTS})] * args.n)
        seconds = time.perf_counter() - t0
        assert all(r.reason == "passed" for r in results)
        out[f"workers={workers}"] = {"programs_per_s": args.n / seconds, "seconds": seconds}
        box.close()
    out["fences"] = Sandbox().fences
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
