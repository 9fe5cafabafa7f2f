"""Keep the Helm chart's CRDs identical to the single source in crds/.

    python -m guardedmodel_operator.crdsync          # copy crds/*.yaml into the chart
    python -m guardedmodel_operator.crdsync --check  # exit 1, naming the files, if they differ

Helm installs files from a chart's crds/ folder verbatim, so the chart needs
its own copy; this check (also run as a unit test) stops the copy drifting.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "crds").is_dir() and (parent / "charts" / "guardedmodel").is_dir():
            return parent
    raise RuntimeError(f"no crds/ and charts/guardedmodel/ above {here}; run from a source checkout")


def differences(root: Path) -> list[str]:
    source, chart = root / "crds", root / "charts" / "guardedmodel" / "crds"
    wanted = {p.name: p.read_bytes() for p in source.glob("*.yaml")}
    present = {p.name: p.read_bytes() for p in chart.glob("*.yaml")} if chart.is_dir() else {}
    problems = [
        f"charts/guardedmodel/crds/{name} is missing" for name in sorted(wanted.keys() - present.keys())
    ]
    problems += [
        f"charts/guardedmodel/crds/{name} has no source in crds/"
        for name in sorted(present.keys() - wanted.keys())
    ]
    problems += [
        f"charts/guardedmodel/crds/{name} differs from crds/{name}"
        for name in sorted(wanted.keys() & present.keys())
        if wanted[name] != present[name]
    ]
    return problems


def sync(root: Path) -> None:
    chart = root / "charts" / "guardedmodel" / "crds"
    chart.mkdir(parents=True, exist_ok=True)
    for stale in chart.glob("*.yaml"):
        if not (root / "crds" / stale.name).exists():
            stale.unlink()
    for path in (root / "crds").glob("*.yaml"):
        shutil.copyfile(path, chart / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    root = repo_root()
    if args.check:
        problems = differences(root)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python -m guardedmodel_operator.crdsync", file=sys.stderr)
        return 1 if problems else 0
    sync(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
