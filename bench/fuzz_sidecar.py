"""Fuzz the live sidecar (real Triton behind it) over both protocols: ``make fuzz``.

    .venv/bin/python bench/fuzz_sidecar.py [--cases 100000] [--seed S]
    .venv/bin/python bench/fuzz_sidecar.py --replay bench/results/fuzz-failures.jsonl
    .venv/bin/python bench/fuzz_sidecar.py --http 127.0.0.1:8080 --grpc 127.0.0.1:8081 [--pid N]

Starts Triton with the toy model and one sidecar with the attack suite's limits (the same target as
tests/integration/sidecar/test_sidecar_attacks.py), then sends ``--cases`` structure-aware mutated
v2 requests, half over HTTP/1.1 and half over gRPC, from many concurrent connections. Counts crashes
(the process died or did not answer ready within 1 s on both protocols), 5xx and INTERNAL/UNKNOWN
statuses, unguarded 2xx on control endpoints, invalid replies and hung connections; every failing
case is written to ``--failures`` (JSON lines) for ``--replay``. Writes bench/results/fuzz.json with
the counts, the seed and the rate. Exit status 1 when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests" / "integration" / "sidecar"))

from attack_fuzz import Case, Fuzzer, FuzzReport, replay  # noqa: E402
from attack_stack import ATTACK_LIMITS, attack_stack  # noqa: E402
from sidecar_toy import write_toy_repository  # noqa: E402


def progress(report: FuzzReport, t0: float, total: int) -> None:
    done = report.cases
    rate = done / max(time.monotonic() - t0, 1e-9)
    print(
        f"{done}/{total} cases ({rate:.0f}/s): crashes {report.crashes}, 5xx {report.http_5xx}, "
        f"INTERNAL {report.grpc_internal}, other failures {report.failures - report.crashes - report.http_5xx - report.grpc_internal}",
        flush=True,
    )


def fuzz(args: argparse.Namespace, http: str, grpc_url: str, pid: int | None, triton: str) -> dict[str, Any]:
    args.failures.parent.mkdir(parents=True, exist_ok=True)
    args.failures.unlink(missing_ok=True)
    t0 = time.monotonic()
    fuzzer = Fuzzer(
        http,
        grpc_url,
        seed=args.seed,
        pid=pid,
        triton_url=triton,
        failures_path=args.failures,
        http_workers=args.workers,
        grpc_workers=args.workers,
        progress=lambda report: progress(report, t0, args.cases),
    )
    report = asyncio.run(fuzzer.run(args.cases, grpc_share=args.grpc_share))
    payload = report.to_json()
    payload.update(
        command=" ".join(sys.argv),
        limits=ATTACK_LIMITS if args.http is None else "as configured",
        machine={"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]},
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        note=(
            "crashes: the sidecar died or did not answer ready within 1 s on both protocols; "
            "grpc_client_write_race counts grpcio client bug grpc/grpc#36066 (not a sidecar status)"
        ),
    )
    if not args.failures.exists():
        payload["failures_file"] = ""
    return payload


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", default="", help="default: a new random seed, recorded in the results")
    parser.add_argument("--grpc-share", type=float, default=0.5, help="fraction of the cases sent over gRPC")
    parser.add_argument("--workers", type=int, default=16, help="concurrent clients per protocol")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    parser.add_argument("--failures", type=Path, default=RESULTS / "fuzz-failures.jsonl")
    parser.add_argument("--replay", type=Path, help="send the cases of a failures file again, one by one")
    parser.add_argument(
        "--http", help="fuzz a sidecar already running here (host:port) instead of starting one"
    )
    parser.add_argument("--grpc", help="its gRPC address (with --http)")
    parser.add_argument("--pid", type=int, help="its process id (with --http), for crash detection and CPU")
    parser.add_argument("--triton", default="", help="its Triton's HTTP address (with --http)")
    args = parser.parse_args()
    args.seed = args.seed or secrets.token_hex(4)

    if args.http is not None:
        if not args.grpc:
            parser.error("--http needs --grpc")
        if args.replay:
            return replay_file(args.replay, args.http, args.grpc)
        payload = fuzz(args, args.http, args.grpc, args.pid, args.triton)
        return report(payload, args.out)

    with tempfile.TemporaryDirectory(prefix="fuzz-sidecar-") as tmp:
        work = Path(tmp)
        repository = write_toy_repository(work)
        with attack_stack(repository, work) as stack:
            if args.replay:
                return replay_file(args.replay, stack.http, stack.grpc)
            print(
                f"fuzzing the sidecar (HTTP {stack.http}, gRPC {stack.grpc}, pid {stack.pid}) with seed "
                f"{args.seed}: {args.cases} cases",
                flush=True,
            )
            payload = fuzz(args, stack.http, stack.grpc, stack.pid, stack.triton.http_url)
            if payload["crashes"]:
                payload["sidecar_log_tail"] = stack.sidecar.log_path.read_text()[-4000:]
        return report(payload, args.out)


def report(payload: dict[str, Any], out: Path) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(
        f"{payload['cases']} cases ({payload['cases_http']} HTTP, {payload['cases_grpc']} gRPC) in "
        f"{payload['duration_s']:.0f} s = {payload['cases_per_s']} cases/s, seed {payload['seed']}: "
        f"{payload['crashes']} crashes, {payload['http_5xx']} HTTP 5xx, {payload['grpc_internal']} gRPC "
        f"INTERNAL/UNKNOWN, {payload['failures']} failures in all -> {out}"
    )
    for line in payload["first_failures"]:
        print("  ", line)
    if payload.get("failures_file"):
        print(f"failing cases: {payload['failures_file']} (replay with --replay)")
    return 1 if payload["failures"] else 0


def replay_file(path: Path, http: str, grpc_url: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        outcome = asyncio.run(replay(Case.from_json(record), http, grpc_url))
        print(
            f"{number}: {record.get('kind')} {record.get('where')} (was: {record.get('reason')}) -> {outcome}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
