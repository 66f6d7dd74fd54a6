"""meshpilot CA benchmark: issue N workload certificates while watching the event loop.

    python benchmarks/bench_ca.py [--certs 2000] [--workers 1] [--key-type ecdsa] [--json]

The issue's bound: signing must not sit on the push path's critical section, so issuing
2,000 certificates must not stall pushes to other proxies. A push is event-loop work, so
the measure is the loop's lateness: a ticker task sleeps 1 ms in a loop and records how
late each wake-up is, while the certificates are issued. Three runs:

* ``idle``   - the ticker alone: the machine's own noise floor;
* ``inline`` - ``ca.issue`` called on the loop (what the Signer avoids): the loop is
  blocked for the whole burst, so its max lag is the burst's duration;
* ``callers only`` - N coroutines started at once that do nothing: the loop's cost of the
  burst itself (N stream handlers waking together), paid with or without a CA;
* ``signer`` - ``await signer.issue`` for N identities at once (``asyncio.gather``), the
  way N new proxies arriving together would ask.

Printed: time to issue all, certificates/s, and the loop lag's p50/p99/max per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ca import CertificateAuthority, KeyType, Signer, WorkloadIdentity

TICK = 0.001


class LagMeter:
    """A task that sleeps ``TICK`` over and over and records how late each wake-up is."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagMeter:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.05)
        self.lags.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        while not self._stop:
            t = time.perf_counter()
            await asyncio.sleep(TICK)
            self.lags.append(time.perf_counter() - t - TICK)

    def summary(self) -> dict[str, float]:
        lags = sorted(self.lags) or [0.0]
        return {
            "ticks": len(lags),
            "lag_p50_ms": statistics.median(lags) * 1e3,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1e3,
            "lag_max_ms": lags[-1] * 1e3,
        }


async def measure(name: str, n: int, work: Callable[[], Awaitable[object] | None]) -> dict[str, Any]:
    async with LagMeter() as meter:
        start = time.perf_counter()
        result = work()
        if result is not None:
            await result
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.02)  # let the ticker see the loop free again
    row: dict[str, Any] = {"run": name, "certs": n, "seconds": elapsed}
    row["certs_per_s"] = n / elapsed if n and elapsed else 0.0
    return row | meter.summary()


async def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    key_type: KeyType = args.key_type
    with tempfile.TemporaryDirectory() as state:
        ca = CertificateAuthority.load_or_create(state, key_type=key_type)
        signer = Signer(ca, workers=args.workers)
        identities = [WorkloadIdentity.of(f"ns-{i % 100}", f"sa-{i}") for i in range(args.certs)]
        inline_n = min(args.certs, 500)
        rows = [await measure("idle", 0, lambda: asyncio.sleep(0.5))]

        def inline() -> None:
            for ident in identities[:inline_n]:
                ca.issue(ident)

        rows.append(await measure("inline", inline_n, inline))
        rows.append(
            await measure("callers only", 0, lambda: asyncio.gather(*(asyncio.sleep(0) for _ in identities)))
        )
        await signer.issue(identities[0])  # start the worker thread outside the measurement
        rows.append(
            await measure(
                f"signer (workers={args.workers})",
                args.certs,
                lambda: asyncio.gather(*(signer.issue(i) for i in identities)),
            )
        )
        signer.close()
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"# {args.certs} {args.key_type} certs, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("| run | certs | seconds | certs/s | loop lag p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['certs']} | {r['seconds']:.3f} | {r['certs_per_s']:.0f} | "
            f"{r['lag_p50_ms']:.2f} | {r['lag_p99_ms']:.2f} | {r['lag_max_ms']:.2f} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--certs", type=int, default=2000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--key-type", choices=["ecdsa", "rsa"], default="ecdsa")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result_rows = asyncio.run(main(arguments))
    if arguments.json:
        print(json.dumps(result_rows, indent=1))
    else:
        report(result_rows, arguments)
