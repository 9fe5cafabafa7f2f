"""What the fuzzer sends: seeded, structure-aware generators of v2 cases for both protocols.

An HTTP case starts from a valid JSON or binary-tensor infer request, a read-only or control endpoint,
or a random target, then gets structure-aware mutations (a JSON node replaced, a shape made absurd,
headers added, doubled or dropped, the body gzip-bombed or re-chunked, the target path-tricked) and,
sometimes, blind byte mutations of its wire form; a few cases are plain random bytes or several
requests pipelined. A gRPC case is a ModelInferRequest (or stream of them) with fields filled with
absurd values and counts, another method's message, an unknown method, or random bytes, with random
metadata and compression. Every generator takes a ``random.Random`` so a seed replays a run.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import random
import struct
import urllib.parse
import zlib
from dataclasses import dataclass, field
from typing import Any

from attack_wire import deflate_bomb
from tritonclient.grpc import service_pb2

SERVICE = "inference.GRPCInferenceService"
MODEL = "toy"
INPUT_DIM = 8

# ------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    protocol: str  # "http" or "grpc"
    kind: str  # which generator made it
    data: bytes = b""  # HTTP: the exact bytes sent
    method: str = ""  # gRPC: full method path
    messages: list[bytes] = field(default_factory=list)
    stream: bool = False
    metadata: list[tuple[str, str | bytes]] = field(default_factory=list)
    compress: bool = False
    where: str = ""  # seed:worker:index

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "kind": self.kind, "where": self.where}
        if self.protocol == "http":
            out["data_b64"] = base64.b64encode(self.data).decode()
        else:
            out.update(
                method=self.method,
                stream=self.stream,
                compress=self.compress,
                messages_b64=[base64.b64encode(m).decode() for m in self.messages],
                metadata=[
                    [k, base64.b64encode(v).decode() if isinstance(v, bytes) else v] for k, v in self.metadata
                ],
            )
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        if data["protocol"] == "http":
            return cls(
                "http", data.get("kind", ""), base64.b64decode(data["data_b64"]), where=data.get("where", "")
            )
        metadata = [
            (k, base64.b64decode(v) if k.endswith("-bin") else v) for k, v in data.get("metadata", [])
        ]
        return cls(
            "grpc",
            data.get("kind", ""),
            method=data["method"],
            messages=[base64.b64decode(m) for m in data["messages_b64"]],
            stream=bool(data.get("stream")),
            metadata=metadata,
            compress=bool(data.get("compress")),
            where=data.get("where", ""),
        )


# ------------------------------------------------------------------------------------ shared mutators

INTERESTING_INTS = [0, 1, -1, 2, 7, 8, 9, 255, 65535, 2**31 - 1, 2**31, 2**32, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, -(2**63), 10**30]  # fmt: skip
INTERESTING_TOKENS = [b"\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b"-1", b"0", b"ffffffffffffffff", b"\r\n\r\n", b"\xff", b"\x7f", b"%00", b"..", b"/", b",", b";", b'"', b"{", b"[", b"]", b"}", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"]  # fmt: skip


def mutate_bytes(rng: random.Random, data: bytes, rounds: int) -> bytes:
    buf = bytearray(data)
    for _ in range(rounds):
        if not buf:
            buf += rng.choice(INTERESTING_TOKENS)
            continue
        op = rng.randrange(7)
        i = rng.randrange(len(buf))
        if op == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[i] = rng.choice(b"\r\n\x00 :-09fF\x7f\xff\t;,")
        elif op == 2:
            buf[i:i] = rng.choice(INTERESTING_TOKENS)
        elif op == 3:
            del buf[i : i + rng.randint(1, 16)]
        elif op == 4:
            j = min(len(buf), i + rng.randint(1, 64))
            buf[j:j] = buf[i:j]
        elif op == 5:
            del buf[rng.randrange(len(buf) + 1) :]
        else:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(buf)


def random_text(rng: random.Random, n: int | None = None) -> str:
    n = rng.choice([0, 1, 3, 8, 20, 100]) if n is None else n
    alphabet = rng.choice(
        [
            "abcdefghijklmnopqrstuvwxyz",
            "INPUTLOGITSFEATURESFP32BYTES",
            "\x00\x01\r\n\t \x1b\x7f",
            "é€\u2028\U0001f600",
        ]
    )
    return "".join(rng.choice(alphabet) for _ in range(n))


DEEP = "\u0000DEEP\u0000"  # replaced on the wire by a deep nest of arrays (json.dumps cannot write one)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.25:
        return rng.choice(INTERESTING_INTS)
    if r < 0.35:
        return rng.choice([0.5, -0.0, 1e308, -1e308, 1.5, 3.4e38, 1e-45])
    if r < 0.5:
        return random_text(rng)
    if r < 0.55:
        return rng.choice([True, False, None])
    if r < 0.6:
        return DEEP
    if depth > 3:
        return rng.choice([[], {}, ""])
    if r < 0.8:
        return [random_json(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 8]))]
    return {
        random_text(rng, rng.randint(0, 6)): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))
    }


def dump_json(rng: random.Random, doc: Any) -> bytes:
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
    marker = json.dumps(DEEP, ensure_ascii=False)
    if DEEP in text or marker in text:
        n = rng.choice([33, 200, 1100, 100_000])
        text = text.replace(json.dumps(DEEP), "[" * n + "]" * n).replace(marker, "[" * n + "]" * n)
    return text.encode("utf-8", "surrogatepass")


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """Replace, delete or add one node somewhere in ``doc``, biased towards the fields that matter."""
    if rng.random() < 0.1 and isinstance(doc, dict):
        # Triton's reserved request parameters, with values of any type.
        key = rng.choice(
            ["priority", "timeout", "sequence_id", "sequence_start", "sequence_end", "binary_data_output"]
        )
        doc["parameters"] = {key: random_json(rng)}
        return doc
    if rng.random() < 0.5 and isinstance(doc, dict) and doc.get("inputs") and isinstance(doc["inputs"], list):
        entry = doc["inputs"][0]
        if isinstance(entry, dict):
            key = rng.choice(["shape", "datatype", "data", "name", "parameters", "shape", "shape"])
            if key == "shape":
                entry["shape"] = rng.choice(
                    [
                        [rng.choice(INTERESTING_INTS) for _ in range(rng.randint(0, 4))],
                        [rng.choice(INTERESTING_INTS), INPUT_DIM],
                        random_json(rng),
                        [-1, INPUT_DIM],
                        [2**40],
                    ]
                )
            elif key == "datatype":
                entry["datatype"] = rng.choice(
                    ["FP64", "BYTES", "INT8", "BOOL", "FP16", "BF16", "", "fp32", random_text(rng)]
                )
            elif key == "parameters":
                entry["parameters"] = {
                    rng.choice(
                        ["binary_data_size", "binary_data", "shared_memory_region", random_text(rng, 4)]
                    ): random_json(rng)
                }
            else:
                entry[key] = random_json(rng)
            return doc
    node: Any = doc
    for _ in range(rng.randint(0, 4)):
        if isinstance(node, dict) and node:
            child = node[rng.choice(list(node))]
        elif isinstance(node, list) and node:
            child = rng.choice(node)
        else:
            break
        if not isinstance(child, dict | list):
            break
        node = child
    if isinstance(node, dict):
        if node and rng.random() < 0.4:
            del node[rng.choice(list(node))]
        else:
            key = (
                rng.choice([*list(node), "id", "parameters", "outputs", "inputs", random_text(rng, 5)])
                if node
                else "x"
            )
            node[key] = random_json(rng)
    elif isinstance(node, list):
        if node and rng.random() < 0.5:
            node[rng.randrange(len(node))] = random_json(rng)
        else:
            node.append(random_json(rng))
    return doc if isinstance(doc, dict | list) else random_json(rng)


# ------------------------------------------------------------------------------------ HTTP cases

_bomb = functools.lru_cache(maxsize=4)(deflate_bomb)

READ_ONLY = [
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", f"/v2/models/{MODEL}"),
    ("GET", f"/v2/models/{MODEL}/ready"),
    ("GET", f"/v2/models/{MODEL}/config"),
    ("GET", f"/v2/models/{MODEL}/versions/1"),
    ("GET", f"/v2/models/{MODEL}/stats"),
    ("POST", "/v2/repository/index"),
]
CONTROL = [
    ("POST", f"/v2/repository/models/{MODEL}/load"),
    ("POST", f"/v2/repository/models/{MODEL}/unload"),
    ("POST", "/v2/logging"),
    ("GET", "/v2/logging"),
    ("POST", "/v2/trace/setting"),
    ("POST", f"/v2/models/{MODEL}/trace/setting"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("POST", "/v2/systemsharedmemory/unregister"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/cudasharedmemory/region/r/register"),
    ("POST", f"/v2/models/{MODEL}/generate"),
    ("POST", f"/v2/models/{MODEL}/generate_stream"),
]
INFER_TARGETS = [
    f"/v2/models/{MODEL}/infer",
    f"/v2/models/{MODEL}/infer",
    f"/v2/models/{MODEL}/versions/1/infer",
    f"/v2/models/{MODEL}/versions/2/infer",
    f"/v2/models/{MODEL}/versions/x/infer",
    "/v2/models/nope/infer",
]
HEADER_NAMES = ["Content-Length", "Transfer-Encoding", "Content-Encoding", "Inference-Header-Content-Length", "Expect", "Connection", "Content-Type", "Host", "Upgrade", "Accept-Encoding", "X-Request-Id"]  # fmt: skip


def _rows(rng: random.Random, batch: int) -> list[float]:
    return [round(rng.uniform(0.2, 0.8), 4) for _ in range(batch * INPUT_DIM)]


class HttpCases:
    def __init__(self, rng: random.Random, seed: str) -> None:
        self.rng = rng
        self.seed = seed
        self.index = 0

    def next(self) -> Case:
        rng = self.rng
        self.index += 1
        r = rng.random()
        if r < 0.04:
            data, kind = (
                bytes(rng.randrange(256) for _ in range(rng.choice([1, 16, 200, 2000]))),
                "random-bytes",
            )
        elif r < 0.09:
            data, kind = b"".join(self._structured()[0] for _ in range(rng.randint(2, 8))), "pipelined"
        else:
            data, kind = self._structured()
            if rng.random() < 0.35:
                data, kind = mutate_bytes(rng, data, rng.randint(1, 4)), kind + "+bytes"
        return Case("http", kind, data, where=f"{self.seed}:{self.index}")

    def _structured(self) -> tuple[bytes, str]:
        rng = self.rng
        headers: list[tuple[str, str]] = []
        body = b""
        r = rng.random()
        doc: Any = None
        if r < 0.38:
            kind, method, target = "json-infer", "POST", rng.choice(INFER_TARGETS)
            batch = rng.choice([1, 1, 2, 4])
            doc = {
                "inputs": [
                    {
                        "name": "INPUT",
                        "datatype": "FP32",
                        "shape": [batch, INPUT_DIM],
                        "data": _rows(rng, batch),
                    }
                ]
            }
            if rng.random() < 0.3:
                doc["id"] = random_text(rng)
            if rng.random() < 0.2:
                doc["outputs"] = [{"name": rng.choice(["LOGITS", "FEATURES", "NOPE"])}]
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                doc = mutate_json(rng, doc)
            body = dump_json(rng, doc)
            headers.append(("Content-Type", "application/json"))
        elif r < 0.58:
            kind, method, target = "binary-infer", "POST", rng.choice(INFER_TARGETS)
            batch = rng.choice([1, 2])
            values = _rows(rng, batch)
            raw = struct.pack(f"<{len(values)}f", *values)
            doc = {
                "inputs": [
                    {
                        "name": "INPUT",
                        "datatype": "FP32",
                        "shape": [batch, INPUT_DIM],
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ]
            }
            if rng.random() < 0.5:
                doc["outputs"] = [
                    {"name": "LOGITS", "parameters": {"binary_data": rng.choice([True, False, "yes", 1])}}
                ]
            for _ in range(rng.choice([0, 1, 2])):
                doc = mutate_json(rng, doc)
            header = dump_json(rng, doc)
            if rng.random() < 0.2:
                raw = raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw + raw
            body = header + raw
            length: Any = len(header)
            if rng.random() < 0.15:
                length = rng.choice([*INTERESTING_INTS, "abc", "", "1e3", " 5", len(header) + 1])
            headers.append(("Inference-Header-Content-Length", str(length)))
            headers.append(("Content-Type", "application/octet-stream"))
        elif r < 0.72:
            kind = "read-only"
            method, target = rng.choice(READ_ONLY)
            if method == "POST":
                body = rng.choice([b"", b"{}", b'{"ready":true}', dump_json(rng, random_json(rng))])
        elif r < 0.84:
            kind = "control"
            method, target = rng.choice(CONTROL)
            body = dump_json(
                rng,
                rng.choice(
                    [
                        {},
                        {"log_verbose_level": 3},
                        {"trace_level": ["TENSORS"]},
                        {"key": "/x", "byte_size": 64},
                        {"INPUT": _rows(rng, 1)},
                        random_json(rng),
                    ]
                ),
            )
        else:
            kind = "random-target"
            method = rng.choice(
                ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "PRI", "get", "FOO"]
            )
            target = rng.choice(
                [
                    *INFER_TARGETS,
                    *(t for _, t in READ_ONLY),
                    *(t for _, t in CONTROL),
                    "/",
                    "*",
                    "http://a/v2/logging",
                ]
            )
            body = dump_json(rng, random_json(rng)) if rng.random() < 0.5 else b""
        target = self._mutate_target(target) if rng.random() < 0.25 else target
        chunked = rng.random() < 0.12
        if body and rng.random() < 0.08:
            enc = rng.choice(["gzip", "deflate", "gzip-bomb", "deflate-bomb", "garbage", "br"])
            headers.append(("Content-Encoding", enc.split("-")[0]))
            if enc == "gzip":
                body = gzip.compress(body)
            elif enc == "deflate":
                body = zlib.compress(body)
            elif enc.endswith("bomb"):
                body = _bomb(
                    rng.choice([16, 64]) << 20, container="gzip" if enc.startswith("gzip") else "zlib"
                )
            else:
                body = body[: len(body) // 2]
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            headers = self._mutate_headers(headers)
        head = [f"{method} {target} HTTP/1.1", "Host: sidecar"]
        if chunked:
            head.append("Transfer-Encoding: chunked")
            body = self._chunk(body)
        elif body or method in ("POST", "PUT"):
            head.append(f"Content-Length: {len(body)}")
        head += [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body, kind

    def _mutate_target(self, target: str) -> str:
        rng = self.rng
        op = rng.randrange(6)
        if op == 0:
            return target.replace("/", rng.choice(["//", "/./", "/%2e/", "/../v2/"]), 1)
        if op == 1:
            return target + rng.choice(["?", "?a=b", "?x=" + "a" * 5000, "#frag", "/", "%00", "/.."])
        if op == 2:
            parts = target.split("/")
            parts[rng.randrange(len(parts))] = random_text(rng, rng.choice([1, 8, 300]))
            return "/".join(parts)
        if op == 3:
            return urllib.parse.quote(target, safe="")
        if op == 4:
            return target.upper()
        return target.replace(
            MODEL, rng.choice(["", "..", "toy%2f..%2flogging", "t\u00f6y", "toy/versions/1"])
        )

    def _mutate_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        rng = self.rng
        op = rng.randrange(4)
        if op == 0 and headers:
            headers.append(rng.choice(headers))
        elif op == 1 and headers:
            del headers[rng.randrange(len(headers))]
        else:
            name = rng.choice([*HEADER_NAMES, random_text(rng, rng.randint(1, 12)) or "X"])
            value = rng.choice(
                [
                    str(rng.choice(INTERESTING_INTS)),
                    "chunked",
                    "chunked, identity",
                    "gzip",
                    "identity",
                    "100-continue",
                    "close",
                    "keep-alive",
                    "Upgrade",
                    "h2c",
                    "application/json",
                    random_text(rng),
                    "a" * rng.choice([100, 8000, 70000]),
                ]
            )
            headers.append((name, value))
        return headers

    def _chunk(self, body: bytes) -> bytes:
        rng = self.rng
        out = bytearray()
        pos = 0
        while pos < len(body):
            n = rng.randint(1, max(1, len(body) - pos))
            size = rng.choice([f"{n:x}", f"{n:X}", f"{n:08x}", f"{n:x};ext=1"])
            out += size.encode() + b"\r\n" + body[pos : pos + n] + b"\r\n"
            pos += n
        return bytes(out) + b"0\r\n\r\n"


# ------------------------------------------------------------------------------------ gRPC cases

READ_ONLY_GRPC = {
    "ServerLive": service_pb2.ServerLiveRequest,
    "ServerReady": service_pb2.ServerReadyRequest,
    "ServerMetadata": service_pb2.ServerMetadataRequest,
    "ModelReady": service_pb2.ModelReadyRequest,
    "ModelMetadata": service_pb2.ModelMetadataRequest,
    "ModelConfig": service_pb2.ModelConfigRequest,
    "ModelStatistics": service_pb2.ModelStatisticsRequest,
    "RepositoryIndex": service_pb2.RepositoryIndexRequest,
}
CONTROL_GRPC = {
    "RepositoryModelLoad": service_pb2.RepositoryModelLoadRequest,
    "RepositoryModelUnload": service_pb2.RepositoryModelUnloadRequest,
    "LogSettings": service_pb2.LogSettingsRequest,
    "TraceSetting": service_pb2.TraceSettingRequest,
    "SystemSharedMemoryRegister": service_pb2.SystemSharedMemoryRegisterRequest,
    "SystemSharedMemoryUnregister": service_pb2.SystemSharedMemoryUnregisterRequest,
    "SystemSharedMemoryStatus": service_pb2.SystemSharedMemoryStatusRequest,
    "CudaSharedMemoryRegister": service_pb2.CudaSharedMemoryRegisterRequest,
    "CudaSharedMemoryUnregister": service_pb2.CudaSharedMemoryUnregisterRequest,
    "CudaSharedMemoryStatus": service_pb2.CudaSharedMemoryStatusRequest,
}
CONTENT_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]  # fmt: skip
DATATYPES = ["FP32", "FP64", "FP16", "BF16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "", "fp32", "X"]  # fmt: skip


class GrpcCases:
    def __init__(self, rng: random.Random, seed: str) -> None:
        self.rng = rng
        self.seed = seed
        self.index = 0

    def next(self) -> Case:
        rng = self.rng
        self.index += 1
        case = Case("grpc", "", where=f"{self.seed}:{self.index}")
        r = rng.random()
        if r < 0.05:
            name = rng.choice([*READ_ONLY_GRPC, "ModelInfer", "ModelStreamInfer"])
            case.kind, case.method = "random-bytes", f"/{SERVICE}/{name}"
            case.stream = name == "ModelStreamInfer"
            case.messages = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 9, 100, 1000])))]
        elif r < 0.08:
            case.kind = "unknown-method"
            case.method = rng.choice(
                [f"/{SERVICE}/{random_text(rng, 6) or 'X'}", "/grpc.health.v1.Health/Check", "/x/y"]
            )
            case.messages = [b""]
        elif r < 0.65:
            case.kind, case.method = "infer", f"/{SERVICE}/ModelInfer"
            case.messages = [self._infer_bytes()]
        elif r < 0.78:
            case.kind, case.method, case.stream = "stream-infer", f"/{SERVICE}/ModelStreamInfer", True
            case.messages = [self._infer_bytes() for _ in range(rng.randint(1, 4))]
        elif r < 0.9:
            name = rng.choice(list(READ_ONLY_GRPC))
            msg = READ_ONLY_GRPC[name]()
            if hasattr(msg, "name"):
                msg.name = rng.choice([MODEL, MODEL, "", "nope", random_text(rng)])
            if hasattr(msg, "version") and rng.random() < 0.3:
                msg.version = rng.choice(["1", "2", "-1", random_text(rng)])
            case.kind, case.method, case.messages = (
                "read-only",
                f"/{SERVICE}/{name}",
                [msg.SerializeToString()],
            )
        else:
            name = rng.choice(list(CONTROL_GRPC))
            msg = CONTROL_GRPC[name]()
            if name == "LogSettings":
                msg.settings["log_verbose_level"].uint32_param = 3
            elif name == "TraceSetting":
                msg.settings["trace_level"].value.append("TENSORS")
            elif hasattr(msg, "model_name"):
                msg.model_name = MODEL
            elif hasattr(msg, "name"):
                msg.name = "r"
            case.kind, case.method, case.messages = "control", f"/{SERVICE}/{name}", [msg.SerializeToString()]
        if rng.random() < 0.15:
            case.messages = [mutate_bytes(rng, m, rng.randint(1, 4)) for m in case.messages]
            case.kind += "+bytes"
        if rng.random() < 0.2:
            for _ in range(rng.randint(1, 3)):
                key = "".join(
                    rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_.") for _ in range(rng.randint(1, 20))
                )
                key = "x" + key.lstrip("-_.")
                if rng.random() < 0.2:
                    case.metadata.append(
                        (key + "-bin", bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
                    )
                else:
                    n = rng.choice([0, 5, 100, 4000])
                    case.metadata.append((key, "".join(chr(rng.randint(32, 126)) for _ in range(n))))
        case.compress = rng.random() < 0.1
        return case

    def _infer_bytes(self) -> bytes:
        rng = self.rng
        batch = rng.choice([1, 1, 2, 4])
        values = _rows(rng, batch)
        msg = service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = msg.inputs.add(name="INPUT", datatype="FP32", shape=[batch, INPUT_DIM])
        if rng.random() < 0.7:
            msg.raw_input_contents.append(struct.pack(f"<{len(values)}f", *values))
        else:
            tensor.contents.fp32_contents.extend(values)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            self._mutate(msg)
        return msg.SerializeToString()

    def _mutate(self, msg: Any) -> None:
        rng = self.rng
        op = rng.randrange(11)
        tensor = msg.inputs[0] if msg.inputs else msg.inputs.add(name="INPUT")
        if op == 0:
            msg.model_name = rng.choice(["", "nope", MODEL.upper(), random_text(rng), "x" * 5000])
        elif op == 1:
            msg.model_version = rng.choice(["1", "2", "0", "-1", "x", random_text(rng)])
        elif op == 2:
            msg.id = rng.choice([random_text(rng), "x" * 3000, "\x00\r\n"])
        elif op == 3:
            del tensor.shape[:]
            tensor.shape.extend(
                rng.choice(
                    [
                        [
                            rng.choice([v for v in INTERESTING_INTS if -(2**63) <= v < 2**63])
                            for _ in range(rng.randint(0, 4))
                        ],
                        [-1, INPUT_DIM],
                        [2**40],
                        [2**62, INPUT_DIM],
                    ]
                )
            )
        elif op == 4:
            tensor.datatype = rng.choice(DATATYPES)
        elif op == 5:
            name = rng.choice(CONTENT_FIELDS)
            n = rng.choice([0, 1, 7, 8, 9, 64, 1000, 1000, 100_000])
            target = getattr(tensor.contents, name)
            if name == "bytes_contents":
                target.extend([b"ab"] * n)
            elif name == "bool_contents":
                target.extend([True] * n)
            elif name.startswith("fp"):
                target.extend([0.5] * n)
            else:
                target.extend([1] * n)
        elif op == 6:
            choice = rng.randrange(4)
            if choice == 0:
                del msg.raw_input_contents[:]
            elif choice == 1:
                msg.raw_input_contents.append(b"\x00" * rng.choice([0, 3, 32, 4096]))
            elif choice == 2 and msg.raw_input_contents:
                msg.raw_input_contents[0] = msg.raw_input_contents[0][: rng.randrange(33)]
            else:
                msg.raw_input_contents.append(b"")
        elif op == 7:
            target = rng.choice([msg.parameters, tensor.parameters])
            param = target[
                rng.choice(["binary_data_size", "sequence_id", "priority", "timeout", random_text(rng, 5)])
            ]
            setattr_choice = rng.randrange(5)
            if setattr_choice == 0:
                param.bool_param = True
            elif setattr_choice == 1:
                param.int64_param = rng.choice([v for v in INTERESTING_INTS if -(2**63) <= v < 2**63])
            elif setattr_choice == 2:
                param.string_param = random_text(rng)
            elif setattr_choice == 3:
                param.double_param = rng.choice([0.5, -1.0, 1e308])
            else:
                param.uint64_param = rng.choice([0, 1, 2**64 - 1])
        elif op == 8:
            out = msg.outputs.add(name=rng.choice(["LOGITS", "FEATURES", "NOPE", random_text(rng)]))
            if rng.random() < 0.5:
                out.parameters["binary_data"].bool_param = True
        elif op == 9:
            msg.inputs.add(name=rng.choice(["INPUT", "OTHER", ""]), datatype="FP32", shape=[1, INPUT_DIM])
        else:
            del msg.inputs[:]
