"""``guardedmodel sidecar``: run the guard sidecar in front of a Triton server.

Standalone (no cluster)::

    guardedmodel sidecar --config sidecar.yaml --triton-url 127.0.0.1:8000 --triton-grpc-url 127.0.0.1:8001

In a pod the operator renders ``sidecar.yaml`` with ``guardedModel`` set, and routing follows that
GuardedModel's status through the pod's service account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

from guardedmodel_sidecar.config import ConfigError, Listen, MicroBatching, SidecarConfig, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, required=True, help="sidecar.yaml (see guardedmodel_sidecar.config)"
    )
    parser.add_argument("--triton-url", help="Triton HTTP host:port (overrides triton.httpUrl)")
    parser.add_argument("--triton-grpc-url", help="Triton gRPC host:port (overrides triton.grpcUrl)")
    parser.add_argument("--host", help="address to listen on (overrides listen.host)")
    parser.add_argument(
        "--http-port", type=int, help="v2 HTTP port (overrides listen.http; 0 = any free port)"
    )
    parser.add_argument("--grpc-port", type=int, help="v2 gRPC port (overrides listen.grpc)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (overrides listen.metrics)")
    parser.add_argument("--model-repository", type=Path, help="where <model>/<version>/guard/ is readable")
    parser.add_argument("--audit-dir", type=Path, help="audit log directory (overrides auditDir)")
    parser.add_argument("--spool-dir", type=Path, help="review spool directory (overrides spoolDir)")
    parser.add_argument("--kubeconfig", help="kubeconfig for watching routing outside a cluster")
    parser.add_argument(
        "--micro-batching",
        action="store_true",
        default=None,
        help="batch concurrent requests into one Triton call (tuning.microBatching.enabled)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the HTTP/gRPC ports, for many-core nodes (tuning.workers)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        logging.getLogger("guardedmodel.sidecar").error("%s", exc)
        return 2
    listen = config.listen
    config = config.with_overrides(
        triton_http_url=args.triton_url,
        triton_grpc_url=args.triton_grpc_url,
        model_repository=args.model_repository,
        audit_dir=args.audit_dir,
        spool_dir=args.spool_dir,
        listen=Listen(
            host=args.host or listen.host,
            http=listen.http if args.http_port is None else args.http_port,
            grpc=listen.grpc if args.grpc_port is None else args.grpc_port,
            metrics=listen.metrics if args.metrics_port is None else args.metrics_port,
        ),
    )
    tuning = config.tuning
    if args.micro_batching:
        mb = tuning.micro_batching
        tuning = replace(tuning, micro_batching=MicroBatching(True, mb.max_batch, mb.max_inflight))
    if args.workers is not None:
        tuning = replace(tuning, workers=max(1, args.workers))
    config = config.with_overrides(tuning=tuning)
    if config.tuning.workers == 1:
        _run_worker(config, args.kubeconfig)
        return 0
    return _run_workers(config, args.kubeconfig)


def worker_config(config: SidecarConfig, index: int) -> SidecarConfig:
    """Worker ``index`` of several: its own metrics port and audit directory; only worker 0 loads models."""
    listen = config.listen
    return config.with_overrides(
        listen=Listen(listen.host, listen.http, listen.grpc, listen.metrics + index if listen.metrics else 0),
        audit_dir=config.audit_dir / f"worker-{index}",
        tuning=replace(
            config.tuning,
            load_versions=config.tuning.load_versions and index == 0,
            listen_when_ready=index > 0,
        ),
    )


def _run_workers(config: SidecarConfig, kubeconfig: str | None) -> int:
    # Separate processes (not threads): each has its own GIL and event loop; the kernel spreads
    # connections over them through SO_REUSEPORT.
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_run_worker, args=(worker_config(config, i), kubeconfig), name=f"sidecar-{i}")
        for i in range(config.tuning.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, frame: object) -> None:
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)


def _run_worker(config: SidecarConfig, kubeconfig: str | None) -> None:
    _single_threaded_blas()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency; plain asyncio also works
        pass
    asyncio.run(_serve(config, kubeconfig))


def _single_threaded_blas() -> None:
    """One BLAS thread per process. The guard's products are small (a few hundred rows at most),
    and a multi-threaded OpenBLAS leaves its helper threads spinning in sched_yield after each call:
    measured at batch 64, that spin cost 20+ ms of CPU per request, taken from Triton on the same
    node. The event loop is the sidecar's concurrency; more workers are separate processes."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


async def _serve(config: SidecarConfig, kubeconfig: str | None) -> None:
    from guardedmodel_sidecar.app import SidecarApp

    app = SidecarApp(config, kubeconfig=kubeconfig)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await app.start()
    try:
        await stop.wait()
    finally:
        await app.stop()
