"""`kubectl guardedmodel`: a GuardedModel's rollout, read and steered from the command line.

    status  NAME [--watch] [-o json]     the rollout as the operator sees it, with history and Events
    history NAME [-o json]               status.history as a table
    promote NAME [--full]                the canary's next step now (--full: stable now)
    abort   NAME                         roll the canary back now (reason Aborted)
    undo    NAME [--to-version V]        spec.model.version set back

Installed as `kubectl-guardedmodel` (kubectl finds it on PATH) and as `guardedmodel rollout`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence

from guardedmodel_operator.rollout.commands import Order

from . import actions, view
from .kubectl import Kubectl, KubectlError

POLL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="the GuardedModel's namespace (default: the context's)")
    parser.add_argument("--context", help="the kubeconfig context to use")
    parser.add_argument("--kubeconfig", help="the kubeconfig file to use")
    parser.add_argument("--as", dest="impersonate", metavar="USER", help="act as USER (kubectl --as)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = sub.add_parser("status", help="the rollout: phase, versions, step, metrics judged, history")
    status.add_argument("name")
    status.add_argument("-w", "--watch", action="store_true", help="print it again each time it changes")
    status.add_argument(
        "--timeout", type=float, default=0.0, help="with --watch: stop after this many seconds"
    )
    status.add_argument("-o", "--output", choices=("text", "json"), default="text")
    history = sub.add_parser("history", help="status.history as a table")
    history.add_argument("name")
    history.add_argument("-o", "--output", choices=("text", "json"), default="text")
    promote = sub.add_parser("promote", help="the canary's next step now, without waiting for its check")
    promote.add_argument("name")
    promote.add_argument(
        "--full", action="store_true", help="all traffic to the canary now: the steps left skipped"
    )
    abort = sub.add_parser("abort", help="roll the canary back now (it stays blocked until the spec changes)")
    abort.add_argument("name")
    undo = sub.add_parser(
        "undo", help="set spec.model.version back (the serving version, else lastGoodVersion)"
    )
    undo.add_argument("name")
    undo.add_argument("--to-version", help="the version to set (default: see docs/rollouts.md)")
    for action in (promote, abort):
        action.add_argument(
            "--timeout", type=float, default=60.0, help="how long to wait for the operator (s)"
        )
        action.add_argument("--no-wait", action="store_true", help="write the order and return")


def run(args: argparse.Namespace) -> int:
    kubectl = Kubectl(
        namespace=args.namespace,
        context=args.context,
        kubeconfig=args.kubeconfig,
        impersonate=args.impersonate,
    )
    try:
        if args.action == "status":
            return _status(kubectl, args)
        if args.action == "history":
            body = kubectl.get(args.name)
            history = (body.get("status") or {}).get("history") or []
            print(
                json.dumps(history, indent=2)
                if args.output == "json"
                else view.render_history(body, _width())
            )
            return 0
        body = kubectl.get(args.name)
        if args.action == "undo":
            change = actions.undo(body, args.to_version)
        elif args.action == "promote":
            change = actions.promote(body, args.full)
        else:
            change = actions.abort(body)
        kubectl.merge_patch(args.name, change.patch)
        print(change.summary)
        if change.order is None or args.no_wait:
            return 0
        return _await(kubectl, args.name, change.order, args.timeout)
    except actions.Refused as refused:
        print(f"kubectl guardedmodel {args.action}: {refused}", file=sys.stderr)
        return 1
    except KubectlError as error:
        if error.conflict:
            print(
                f"kubectl guardedmodel {args.action}: {args.name} changed between reading and writing it; "
                "nothing was written. Look at `kubectl guardedmodel status` and run it again",
                file=sys.stderr,
            )
        else:
            print(f"kubectl guardedmodel {args.action}: {error}", file=sys.stderr)
        return 1


def _await(kubectl: Kubectl, name: str, order: Order, timeout_s: float) -> int:
    """Wait until the operator carried the order out, then take the order's annotation off again
    (only if it still holds this order). Left there it would do nothing more: it names this step."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = actions.carried_out(order, kubectl.get(name))
        if state is not None:
            done, said = state
            print(said)
            try:
                kubectl.json_patch(name, actions.cleanup_patch(order))
            except KubectlError as error:  # changed since, or no right to: the order is spent either way
                print(f"the annotation stays (it can never act again): {error}", file=sys.stderr)
            return 0 if done else 1
        if time.monotonic() >= deadline:
            print(
                f"the operator has not acted on {order.words} within {timeout_s:g}s; the order stays on "
                "the object and acts when the operator gets to it (is the operator running? "
                "`kubectl guardedmodel status` shows its conditions)",
                file=sys.stderr,
            )
            return 1
        time.sleep(POLL_S)


def _status(kubectl: Kubectl, args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    shown = None
    while True:
        body = kubectl.get(args.name)
        events = kubectl.events(args.name)
        if args.output == "json":
            text = json.dumps(view.summary(body, events), indent=2, default=str)
        else:
            text = view.render_status(body, events, _width())
        if text != shown:
            if shown is not None:
                print(f"\n--- {time.strftime('%H:%M:%S')} " + "-" * 40)
            print(text, flush=True)
            shown = text
        if not args.watch or (deadline is not None and time.monotonic() >= deadline):
            return 0
        time.sleep(POLL_S * 2)


def _width() -> int:
    return max(80, shutil.get_terminal_size((120, 40)).columns)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl guardedmodel", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
