"""Bounds on everything a network peer can make the sidecar hold, decode or wait for.

Each limit is checked *before* the work it bounds: header bytes while the head is parsed, body bytes
before a body is buffered, elements before a tensor is decoded or allocated, decompressed bytes while
inflating, time while waiting. The defaults sit close to what Envoy, nginx and grpcio ship with, sized
for v2 inference traffic (JSON tensors are far more expensive to decode than binary ones, so a JSON body
gets a much smaller budget than a binary one).

``spec.sidecar.limits`` of a GuardedModel (camelCase, as below) reaches the sidecar's config file as the
``limits`` section; ``parse_limits`` reads it and names the key on any bad value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from guardedmodel_sidecar.config_values import ConfigError, parse_duration

KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # --- HTTP/1.1 request head (Envoy: 60 KiB and 100 headers; nginx: 4 x 8 KiB buffers)
    max_header_bytes: int = 64 * KIB
    max_header_count: int = 100
    # --- bodies: binary-tensor bodies carry raw tensors; JSON bodies cost ~50x more CPU per byte
    max_body_bytes: int = 64 * MIB
    max_json_body_bytes: int = 8 * MIB
    # Inflated size of a gzip/deflate body, enforced chunk by chunk while inflating.
    max_decompressed_bytes: int = 64 * MIB
    max_json_depth: int = 32
    # gRPC: the largest request message (grpcio's default is 4 MiB; ours matches the binary body limit).
    max_grpc_message_bytes: int = 64 * MIB
    # Elements of one request across its inputs, checked from the declared shapes before decoding.
    max_elements: int = 16 * MIB
    # --- time (seconds): nginx client_header_timeout / client_body_timeout / keepalive_timeout
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0  # the longest a started body may go without a new byte
    idle_timeout_s: float = 60.0  # a keep-alive connection with no request in flight
    request_timeout_s: float = 60.0  # one upstream Triton call (gRPC deadlines shorten it)
    # --- concurrency
    max_connections: int = 1024
    max_pipelined_requests: int = 16  # HTTP/1.1 requests read ahead on one connection
    max_concurrent_streams: int = 128  # HTTP/2 streams per gRPC connection (nginx: 128)
    max_triton_connections: int = 64
    # Triton calls in flight over all clients; more wait in a bounded queue, then get 503.
    max_inflight_requests: int = 256


_DURATIONS = {"header_timeout_s", "body_timeout_s", "idle_timeout_s", "request_timeout_s"}


def camel_key(field_name: str) -> str:
    """``max_header_bytes`` -> ``maxHeaderBytes``; ``header_timeout_s`` -> ``headerTimeout``."""
    name = field_name.removesuffix("_s")
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def parse_limits(data: Mapping[str, Any], *, where: str = "limits.") -> Limits:
    """Limits from their camelCase mapping; unknown keys and non-positive values are refused."""
    known = {camel_key(f.name): f.name for f in fields(Limits)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}{unknown[0]}: not a known limit ({', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = known[key]
        if value is None:
            continue
        if name in _DURATIONS:
            number: float = parse_duration(value, f"{where}{key}")
        else:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}{key}: {value!r} must be a whole number")
            number = value
        if number <= 0:
            raise ConfigError(f"{where}{key}: {value!r} must be above zero")
        values[name] = number
    return Limits(**values)


def dump_limits(limits: Limits) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Limits):
        value = getattr(limits, f.name)
        out[camel_key(f.name)] = f"{value}s" if f.name in _DURATIONS else value
    return out
