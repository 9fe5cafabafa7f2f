"""What `rollback_time.py` watches while a run lasts, from outside the product: the answers of a steady
stream of requests, the GuardedModel's status as the API server sends it, counters on /metrics
endpoints, and the times of log lines and Prometheus samples."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from rollback_model import Answer, first_rise

from guardedmodel_cli.demo_traffic import MODEL, FreshRows, connection_lost
from guardedmodel_testground.cluster import LocalCluster
from guardedmodel_testground.object_watch import ObjectWatch
from guardedmodel_testground.prometheus import Prometheus


def grey_shift(rows: np.ndarray) -> np.ndarray:
    """The drift: a grey-level shift, as in the demo."""
    return np.clip(rows * 0.5 + 0.45, 0.0, 1.0)


class Traffic:
    """Single-row requests at a steady rate through the sidecar, each answer kept with its send
    time; `drifting` turns the grey-level shift on for every request after it."""

    def __init__(self, rows: FreshRows, rate: float) -> None:
        self.rows, self.rate = rows, rate
        self.address: str | None = None
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self.drifting = threading.Event()
        self.onset: float | None = None
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Traffic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=10)

    def retarget(self, address: str | None) -> None:
        """A new sidecar (or none): the trace starts over."""
        with self.lock:
            self.address = address
            self.answers, self.errors, self.onset = [], [], None
            self.drifting.clear()

    def _run(self) -> None:
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        client, client_address = None, None
        next_at = time.monotonic()
        while not self.stop_flag.is_set():
            next_at += 1.0 / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - 1.0)  # a stall is not made up in a burst
            with self.lock:
                address, drifted = self.address, self.drifting.is_set()
            if address is None:
                continue
            if client_address != address:
                if client is not None:
                    client.close()
                client, client_address = httpclient.InferenceServerClient(address), address
            row = self.rows.next(1)
            if drifted:
                row = grey_shift(row)
            tensor = httpclient.InferInput("INPUT", list(row.shape), "FP32")
            tensor.set_data_from_numpy(row.astype(np.float32), binary_data=True)
            assert client is not None
            sent = time.time()
            try:
                result = client.infer(MODEL, [tensor])
                version = str(result.get_response().get("parameters", {}).get("model_version"))
                error = None
            except (InferenceServerException, *connection_lost()) as exc:
                version, error = None, f"{type(exc).__name__}: {exc}"
            with self.lock:
                if self.address != address:
                    continue
                if drifted and self.onset is None:
                    self.onset = sent
                self.answers.append(Answer(sent, version, drifted))
                if error:
                    self.errors.append(error)
        if client is not None:
            client.close()

    def trace(self) -> list[Answer]:
        with self.lock:
            return list(self.answers)


class StatusWatch(ObjectWatch):
    """Every status of one GuardedModel as the API server sends it, stamped with the wall clock (the
    bench lines it up with the traffic's send times)."""

    def __init__(self, cluster: LocalCluster, namespace: str, name: str) -> None:
        super().__init__(cluster, "guardedmodel", name, namespace, clock=time.time)

    def first_at(self, predicate: Callable[[dict[str, Any]], bool], after: float = 0.0) -> float | None:
        """When the first status at or after `after` that satisfies `predicate` arrived, or None yet."""
        with self.lock:
            return next((s.at for s in self.seen if s.at >= after and predicate(s.status)), None)


class CounterPoll:
    """Counters read from /metrics endpoints every `period_s`: the sidecar's drifted windows per
    version and the operator's checks by result, each as a (time, value) series."""

    def __init__(self, sources: dict[str, tuple[str, Callable[[Any], bool]]], period_s: float = 0.1) -> None:
        self.sources = sources  # series name -> (URL, which samples of that endpoint to add up)
        self.series: dict[str, list[tuple[float, float]]] = {name: [] for name in sources}
        self.period_s = period_s
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CounterPoll:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        pages: dict[str, str] = {}
        while not self.stop_flag.wait(self.period_s):
            now = time.time()
            pages.clear()
            for name, (url, wanted) in self.sources.items():
                if url not in pages:
                    try:
                        with urllib.request.urlopen(url, timeout=2) as response:
                            pages[url] = response.read().decode()
                    except OSError:
                        pages[url] = ""
                total = sum(
                    sample.value
                    for family in text_string_to_metric_families(pages[url])
                    for sample in family.samples
                    if wanted(sample)
                )
                self.series[name].append((now, total))


def counter_sample(name: str, **labels: str) -> Callable[[Any], bool]:
    return lambda s: s.name == name and all(s.labels.get(k) == v for k, v in labels.items())


_STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d{3})")


def log_times(path: Path, pattern: str) -> list[float]:
    """time.time() of every line of a log matching `pattern` (the logs stamp local time, ms)."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            if re.search(pattern, line) and (stamp := _STAMP.search(line)):
                when = dt.datetime.strptime(stamp.group(1).replace(".", ","), "%Y-%m-%d %H:%M:%S,%f")
                found.append(when.timestamp())
    return found


def first_after(times: list[float], after: float) -> float | None:
    return next((t for t in sorted(times) if t >= after), None)


def raw_samples(prometheus: Prometheus, series: str, since: float) -> dict[str, list[tuple[float, float]]]:
    """Every sample Prometheus holds of `series` since `since`, per series (keyed by its labels)."""
    span = max(10, math.ceil(time.time() - since) + 10)
    return {
        json.dumps(item["metric"], sort_keys=True): [(float(t), float(v)) for t, v in item["values"]]
        for item in prometheus.query(f"{series}[{span}s]")
    }


def scraped_at(prometheus: Prometheus, name: str, version: str, after: float) -> float | None:
    """The timestamp of the first scrape that carried a drifted window of `version` closed after
    `after` (Prometheus stamps a sample with its scrape's start)."""
    selector = f'guardedmodel_io_name="{name}",version="{version}",decision="drifted"'
    found = raw_samples(prometheus, f"guardedmodel_drift_windows_total{{{selector}}}", after)
    return next((first_rise(samples, after) for samples in found.values()), None)


def drift_windows(
    prometheus: Prometheus, name: str, version: str, since: float
) -> list[dict[str, float | None]]:
    """The drift windows of `version` that Prometheus saw close after `since`: the scrape that first
    carried each, the test's decision (1 drifted, 0 stable, None too few rows) and its PSI."""
    selector = f'guardedmodel_io_name="{name}",version="{version}"'
    closed: dict[float, float] = {}
    for samples in raw_samples(prometheus, f"guardedmodel_drift_windows_total{{{selector}}}", since).values():
        for t, value in samples:
            closed[t] = closed.get(t, 0.0) + value
    detected = _one(raw_samples(prometheus, f"guardedmodel_drift_detected{{{selector}}}", since))
    psi = _one(raw_samples(prometheus, f'guardedmodel_drift_score{{{selector},statistic="score"}}', since))
    out, level = [], None
    for t in sorted(closed):
        if level is not None and closed[t] > level and t > since:
            out.append({"scraped": t, "drifted": _finite(detected.get(t)), "psi": _finite(psi.get(t))})
        level = closed[t]
    return out


def _one(found: dict[str, list[tuple[float, float]]]) -> dict[float, float]:
    return dict(next(iter(found.values()), []))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 3)
