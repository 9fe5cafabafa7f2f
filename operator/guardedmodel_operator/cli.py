"""`guardedmodel operator`: run the operator with one typed configuration."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from .config import ConfigError, OperatorConfig, add_arguments  # noqa: F401  (add_arguments is the CLI contract)


def run(args: argparse.Namespace) -> int:
    try:
        config = OperatorConfig.from_env().with_args(args).with_priority_drawn()
    except ConfigError as error:
        print(f"guardedmodel operator: {error}", file=sys.stderr)
        return 2
    # kopf is imported here, not at module level, so `guardedmodel --help`
    # and the other subcommands do not pay for it.
    import kopf

    from .handlers import OperatorState, register

    kopf.configure(
        debug=config.log_level == "debug",
        verbose=config.log_level == "debug",
        quiet=config.log_level in ("warning", "error"),
        log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="k8s" if config.log_format == "json" else None,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    registry = kopf.OperatorRegistry()
    register(registry)
    operator = kopf.operator(
        registry=registry,
        memo=OperatorState(config),
        clusterwide=config.clusterwide,
        namespaces=config.namespaces,
        standalone=not config.peering_name,
        peering_name=config.peering_name or None,
        priority=config.priority,
        liveness_endpoint=config.health_endpoint or None,
    )
    try:
        import uvloop

        uvloop.run(operator)
    except ImportError:
        asyncio.run(operator)
    return 0
