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


def _run_workers(config: SidecarConfig, kubeconfig: str | None) -> int:
    from guardedmodel_sidecar.workers import WorkerPool

    return asyncio.run(WorkerPool(config, kubeconfig, run_pool_worker).run())


def run_pool_worker(
    config: SidecarConfig, kubeconfig: str | None, metrics_socket: str, parent_pid: int, log_level: int
) -> None:
    """One worker of a multi-process sidecar (the target of ``WorkerPool``, in a spawned process)."""
    name = multiprocessing.current_process().name
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [{name}] %(name)s: %(message)s")
    _exit_with_parent(parent_pid)
    _run_worker(config, kubeconfig, metrics_socket=Path(metrics_socket))


def _exit_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the parent dies (even by SIGKILL), so that no orphaned
    worker keeps holding the shared ports. Linux only; elsewhere the parent's stop must do."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        raise SystemExit(0)


def _run_worker(config: SidecarConfig, kubeconfig: str | None, *, metrics_socket: Path | None = None) -> None:
    _single_threaded_blas()
    _uvloop()
    asyncio.run(_serve(config, kubeconfig, metrics_socket))


def _uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency; plain asyncio also works
        pass


def _single_threaded_blas() -> None:
    """One BLAS thread per process. The guard's products are small (a few hundred rows at most),
    and a multi-threaded OpenBLAS leaves its helper threads spinning in sched_yield after each call:
    measured at batch 64, that spin cost 20+ ms of CPU per request, taken from Triton on the same
    node. The event loop is the sidecar's concurrency; more workers are separate processes."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


async def _serve(config: SidecarConfig, kubeconfig: str | None, metrics_socket: Path | None) -> None:
    from guardedmodel_sidecar.app import SidecarApp

    app = SidecarApp(config, kubeconfig=kubeconfig, metrics_socket=metrics_socket)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    # A stop request must also end a start-up still in progress: an extra worker waits up to two
    # minutes for Triton before it joins the ports, and SIGTERM must not wait that out.
    starting = loop.create_task(app.start(), name="start")
    stopping = loop.create_task(stop.wait(), name="stop-signal")
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        else:
            starting.result()  # a start-up error ends the process
            await stopping
    finally:
        stopping.cancel()
        await app.stop()
