"""HTTP/2 conformance of the sidecar's gRPC server: h2spec's whole suite, strict cases included
(frames, stream states, flow control, settings, HPACK, malformed requests). Our server is hand-written
(grpc_http2.py), so a protocol slip would otherwise show up only with some client, some day."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from guardedmodel_testground.h2spec import ensure_h2spec
from guardedmodel_testground.procs import free_port

TARGET = Path(__file__).with_name("h2spec_target.py")


def test_the_grpc_server_passes_h2spec(tmp_path: Path) -> None:
    h2spec = ensure_h2spec()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(TARGET), str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        report = tmp_path / "h2spec.xml"
        run = subprocess.run(
            [str(h2spec), "-h", "127.0.0.1", "-p", str(port), "-o", "2", "--strict", "-j", str(report)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        root = ET.parse(report).getroot()
        failures = [
            f"{suite.get('package')}: {case.get('name') or case.get('classname')}"
            for suite in root.iter("testsuite")
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
        cases = sum(1 for _ in root.iter("testcase"))
        assert cases >= 140, run.stdout[-2000:]
        assert not failures and run.returncode == 0, "\n".join(failures) + run.stdout[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=10)
