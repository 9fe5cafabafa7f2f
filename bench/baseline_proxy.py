"""The bar the sidecar has to clear: a careful aiohttp proxy with a numpy guard, run beside it.

    .venv/bin/python bench/baseline_proxy.py --port 9000 --triton-url 127.0.0.1:8000 \
        --model fashion-mnist --repository examples/.../models --audit /tmp/audit.jsonl

The design's performance figures ("a Python proxy costs ~0.4 ms CPU per request") were measured with a
proxy like this one. Measuring it in the same run as the sidecar turns the targets into a comparison
that neighbours on a shared machine cannot skew. It does what the sidecar does per request, the way
a careful hand-written proxy would: aiohttp server and one keep-alive client session (uvloop, orjson,
``Accept-Encoding: identity``), binary tensors both ways, range/NaN gate, calibrated confidence and the
same Mahalanobis scorer, a decision, a JSONL audit line and Prometheus counters, and Triton's output
bytes spliced into the reply instead of re-encoded. It serves only what the benchmark sends: one binary
FP32 input and binary outputs on HTTP.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import uvloop
from aiohttp import web
from prometheus_client import Counter, Histogram

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "sidecar"))

from guardedmodel_sidecar.guard.artifact import load_artifact  # noqa: E402
from guardedmodel_sidecar.guard.scoring import calibrated_confidence, make_ood_scorer  # noqa: E402

HEADER = "Inference-Header-Content-Length"
DECISIONS = Counter("proxy_requests", "requests by decision", ["decision"])
CONFIDENCE = Histogram("proxy_confidence", "calibrated confidence", buckets=[i / 10 for i in range(11)])


def build_app(args: argparse.Namespace) -> web.Application:
    artifact = load_artifact(Path(args.repository) / args.model / "1" / "guard")
    scorer = make_ood_scorer("mahalanobis", artifact)
    threshold = artifact.thresholds["mahalanobis"]
    temperature = artifact.temperature
    upstream_url = f"http://{args.triton_url}/v2/models/{args.model}/infer"
    audit = Path(args.audit).open("ab", buffering=1 << 16)  # noqa: SIM115  (closed on app cleanup)
    state: dict[str, Any] = {}

    async def on_startup(app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60),
            headers={"Accept-Encoding": "identity"},
        )

    async def on_cleanup(app: web.Application) -> None:
        await state["session"].close()
        audit.close()

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        hlen = int(request.headers[HEADER])
        header = orjson.loads(body[:hlen])
        entry = header["inputs"][0]
        shape = entry["shape"]
        x = np.frombuffer(body, dtype=np.float32, offset=hlen).reshape(shape)
        low, high = float(x.min()), float(x.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
            return web.json_response(
                {"error": f"input '{entry['name']}': values outside [0, 1] or not finite"}, status=400
            )
        upstream_header = orjson.dumps(
            {
                "inputs": [entry],
                "outputs": [
                    {"name": "LOGITS", "parameters": {"binary_data": True}},
                    {"name": "FEATURES", "parameters": {"binary_data": True}},
                ],
            }
        )
        async with state["session"].post(
            upstream_url,
            data=upstream_header + body[hlen:],
            headers={HEADER: str(len(upstream_header)), "Content-Type": "application/octet-stream"},
        ) as upstream:
            reply = await upstream.read()
            reply_hlen = int(upstream.headers[HEADER])
        reply_header = orjson.loads(reply[:reply_hlen])
        offset = reply_hlen
        raw: dict[str, tuple[dict[str, Any], bytes]] = {}
        for out in reply_header["outputs"]:
            size = out["parameters"]["binary_data_size"]
            raw[out["name"]] = (out, reply[offset : offset + size])
            offset += size
        rows = shape[0]
        logits = np.frombuffer(raw["LOGITS"][1], dtype=np.float32).reshape(rows, -1)
        features = np.frombuffer(raw["FEATURES"][1], dtype=np.float32).reshape(rows, -1)
        confidence, predicted = calibrated_confidence(logits, temperature)
        ood = scorer.score(logits, features)
        decision = "review" if bool((confidence < 0.5).any() or (ood > threshold).any()) else "accept"
        DECISIONS.labels(decision).inc()
        for c in confidence:
            CONFIDENCE.observe(float(c))
        audit.write(
            orjson.dumps(
                {
                    "ts": time.time(),
                    "model": args.model,
                    "decision": decision,
                    "confidence": confidence,
                    "predicted": predicted,
                    "ood_score": ood,
                },
                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
            )
        )
        logits_entry, logits_bytes = raw["LOGITS"]
        out_header = orjson.dumps(
            {
                "model_name": reply_header["model_name"],
                "model_version": reply_header.get("model_version", ""),
                "outputs": [logits_entry],
                "parameters": {
                    "guard_decision": decision,
                    "guard_confidence": float(confidence.min()),
                    "guard_ood_score": float(ood.max()),
                },
            }
        )
        return web.Response(
            body=out_header + logits_bytes,
            headers={HEADER: str(len(out_header)), "Content-Type": "application/octet-stream"},
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--repository", required=True)
    parser.add_argument("--audit", required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build_app(args), host="127.0.0.1", port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
