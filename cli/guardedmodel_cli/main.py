"""Entry point of the `guardedmodel` command.

Each subcommand lives in the package that owns it and is imported only when
used, so `guardedmodel sidecar` never pays for torch and `guardedmodel fit`
never pays for kopf. A subcommand module exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("guardedmodel_operator.cli", "run the operator that reconciles GuardedModel resources"),
    "sidecar": ("guardedmodel_sidecar.cli", "run the guard sidecar in front of a Triton server"),
    "fetch-model": (
        "guardedmodel_sidecar.fetch",
        "copy a model from a remote repository (the pod's init step)",
    ),
    "publish": (
        "guardedmodel_cli.publish",
        "publish a new guard version of a model into its s3:// or gs:// repository",
    ),
    "fit": ("guardedmodel_fit.cli", "fit a guard artifact (input gate + calibration) from data"),
    "labels": ("guardedmodel_cli.labels", "store reviewers' labels beside the exported samples (labels put)"),
    "dataset": (
        "guardedmodel_cli.dataset",
        "join exported samples with their labels into a data set file for `fit --data`",
    ),
    "cluster": ("guardedmodel_testground.cluster_cli", "start/stop the local Kubernetes test cluster"),
    "demo": ("guardedmodel_cli.demo", "run the local end-to-end demo"),
    "rollout": (
        "guardedmodel_cli.plugin.main",
        "a GuardedModel's rollout: status, history, promote, abort, undo (also `kubectl guardedmodel`)",
    ),
}

#: What to install when a subcommand's optional part is missing (the image carries only the runtime:
#: operator, sidecar and fetch-model).
MISSING_PART_HINTS = {
    "fit": "pip install 'guardedmodel[fit]'",
    "cluster": "run it from a source checkout after `make setup`",
    "demo": "run it from a source checkout after `make setup`",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="guardedmodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        build_parser().parse_args(argv)  # prints usage and exits
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or error.name.startswith(("guardedmodel_operator", "guardedmodel_sidecar")):
            raise
        hint = MISSING_PART_HINTS.get(name, "pip install 'guardedmodel[test]'")
        print(
            f"guardedmodel {name}: this installation lacks {error.name.split('.')[0]!r}; {hint}",
            file=sys.stderr,
        )
        return 2
    parser = argparse.ArgumentParser(prog=f"guardedmodel {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
