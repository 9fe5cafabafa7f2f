"""The gRPC server around ``GrpcService``: grpc-core's options, the metadata budget and start-up.

What each call may do is ``grpc_server.GrpcService``'s; this module bounds the transport beneath it
(see ``server_options``) and registers the service's raw-bytes handlers with grpcio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from guardedmodel_sidecar.limits import Limits

if TYPE_CHECKING:
    from guardedmodel_sidecar.grpc_server import GrpcService

SERVICE = "inference.GRPCInferenceService"


async def _unimplemented(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this method is not served by the guard sidecar")


class _MethodTable(grpc.GenericRpcHandler):
    """The handlers by full method name; anything else is UNIMPLEMENTED, through a streaming handler so
    nothing of its body is read."""

    _not_served = grpc.stream_stream_rpc_method_handler(_unimplemented)

    def __init__(self, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self._handlers = {f"/{SERVICE}/{name}": handler for name, handler in handlers.items()}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return self._handlers.get(handler_call_details.method, self._not_served)


def server_options(limits: Limits, *, reuse_port: bool) -> list[tuple[str, int]]:
    """grpc-core channel arguments of the sidecar's gRPC server, from ``limits``.

    What grpc-core (grpcio 1.60+) does by itself against floods and rapid resets (CVE-2023-44487), and
    what is set here explicitly so it does not depend on a default:

    - ``grpc.max_concurrent_streams``: SETTINGS_MAX_CONCURRENT_STREAMS; streams opened beyond it are
      refused. With ``grpc.http.overload_protection`` (on by default) a reset stream keeps counting
      against it until its handler has finished, so RST_STREAM right after HEADERS cannot start more
      handlers than the limit.
    - ``grpc.http2.max_requests_per_read``: new streams accepted per read of the socket before the
      transport yields (default 32), so one burst of HEADERS+RST_STREAM pairs cannot monopolise it.
    - ``grpc.http2.ping_on_rst_stream_percent``: a PING answers that share of incoming RST_STREAMs,
      which paces a client that resets faster than it reads.
    - ``grpc.http.tarpit`` (default on, 100 ms to 1 s): refusals of streams over the limit are delayed.
    - Not an argument: a connection stops being read while 10,000 frames the peer induced (SETTINGS and
      PING acks, RST_STREAM) are unsent because it does not read; streams opened before the client has
      acknowledged our SETTINGS beyond the limit are refused.
    - ``grpc.server_max_unrequested_time_in_server``: a call the application has not picked up within
      this many seconds is cancelled.
    - ``grpc.max_metadata_size`` / ``grpc.absolute_max_metadata_size``: soft and hard limit on a header
      list (name + value + 32 bytes per field), both ``max_header_bytes``; the hard one is advertised
      as SETTINGS_MAX_HEADER_LIST_SIZE, and grpc-core enforces it only once the client has ACKed that
      SETTINGS frame (``settings.acked()`` in chttp2 parsing.cc). From the ACK on, a list over it is
      refused (RESOURCE_EXHAUSTED + RST_STREAM, after the tarpit) as soon as the parser sees it: a
      longer string is skipped unbuffered, neither END_HEADERS nor END_STREAM is waited for. Before
      the ACK the hard limit is grpc-core's HTTP/2 default, 16 MiB: a list above the soft limit is
      refused at END_HEADERS only with probability (size - soft) / (16 MiB - soft), else accepted and
      held with its call (grpc-core's copy plus grpcio's Python metadata: 20 lists of 8 MiB sent
      before the ACK, 10 accepted, +246 MiB RSS), and one string of up to 16 MiB is buffered whole
      while parsed. No argument changes that; it is bounded by ``max_concurrent_streams`` per
      connection (streams beyond it are refused before the ACK), ``maximum_concurrent_rpcs`` calls in
      all, and in time by the next argument. A client that ACKs after opening such streams would keep the
      accepted ones until they end: ``MetadataBudget`` refuses them as they start instead. grpc-core also parses ``grpc-timeout`` itself (an unparsable one,
      a 400-digit number included, is a client error, not a crash).
    - ``grpc.http2.settings_timeout``: a connection whose client has not ACKed our SETTINGS within
      ``header_timeout_s`` gets GOAWAY (SETTINGS_TIMEOUT) and is closed, its calls with it (grpc-core's
      default: one minute).
    - ``grpc.max_receive_message_length``: larger messages fail with RESOURCE_EXHAUSTED before the
      handler runs; ``grpc.max_connection_idle_ms`` closes connections without calls (GOAWAY);
      ``grpc.server_handshake_timeout_ms`` drops connections that do not complete the HTTP/2 preface.
    - Keepalive enforcement as Triton's own defaults, so a client tuned for Triton works unchanged:
      pings without data no more often than every 5 minutes, two strikes, then GOAWAY.
    - ``grpc.max_allowed_incoming_connections``: connections beyond ``max_connections`` are closed.

    Not bounded by grpc-core: a stream whose message arrives slowly has no body-progress timer; it
    holds one of ``max_concurrent_streams`` until the client's deadline or the connection ends.
    """
    ms = 1000
    return [
        ("grpc.max_receive_message_length", limits.max_grpc_message_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.http.overload_protection", 1),
        ("grpc.http2.max_requests_per_read", 32),
        ("grpc.http2.ping_on_rst_stream_percent", 1),
        ("grpc.http.tarpit", 1),
        ("grpc.server_max_unrequested_time_in_server", max(1, round(limits.header_timeout_s))),
        ("grpc.max_metadata_size", limits.max_header_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
        ("grpc.max_connection_idle_ms", round(limits.idle_timeout_s * ms)),
        ("grpc.server_handshake_timeout_ms", round(limits.header_timeout_s * ms)),
        ("grpc.http2.settings_timeout", max(1, round(limits.header_timeout_s * ms))),
        ("grpc.keepalive_time_ms", round(limits.idle_timeout_s * ms)),
        ("grpc.keepalive_timeout_ms", 20 * ms),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 300 * ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def max_concurrent_rpcs(limits: Limits) -> int:
    """Calls handled at once by this process (an open stream counts as one). Beyond it grpcio answers
    RESOURCE_EXHAUSTED before any handler runs or any message is kept: the Triton in-flight cap and
    room for as many again waiting, plus streams and the cheap read-only calls."""
    return 4 * limits.max_inflight_requests


class MetadataBudget(grpc.aio.ServerInterceptor):
    """Refuses a call whose metadata is over ``max_header_bytes`` the moment it starts.

    grpc-core enforces its header-list limit only once the client has ACKed our SETTINGS (see
    ``server_options``); a list sent before that can be accepted and then held for as long as the call
    lives. This check runs when the call arrives, before its first message is read, with the HTTP/2
    accounting (name + value + 32 bytes per field), so such a call ends at once with
    RESOURCE_EXHAUSTED and its metadata is freed. A few microseconds per call: the list is the handful
    of fields a client sends."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._refusal = grpc.stream_stream_rpc_method_handler(self._refuse)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        size = 0
        for key, value in details.invocation_metadata or ():
            size += len(key) + len(value) + 32
        if size > self._max:
            return self._refusal
        return await continuation(details)

    async def _refuse(self, messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        # A streaming handler runs without waiting for a request message, whatever the method's kind.
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request metadata is over the limit of {self._max} bytes (limits.maxHeaderBytes)",
        )


async def start_grpc_server(
    service: GrpcService, host: str, port: int, limits: Limits, *, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """grpcio's asyncio server with ``service``'s handlers registered over raw bytes, listening on
    ``host:port`` (0: any free port); returns the started server and the bound port."""
    server = grpc.aio.server(
        options=server_options(limits, reuse_port=reuse_port),
        maximum_concurrent_rpcs=max_concurrent_rpcs(limits),
        interceptors=[MetadataBudget(limits.max_header_bytes)],
    )
    handlers = service.method_handlers()
    # ModelInfer is a registered method: grpcio finds its handler without a Python call per request.
    # Only it: grpcio's aio server waits on one pending future per registered method for every call it
    # accepts (18 futures cost ~5 us a call more than 2), and the other calls are rare.
    server.add_registered_method_handlers(SERVICE, {"ModelInfer": handlers.pop("ModelInfer")})
    server.add_generic_rpc_handlers((_MethodTable(handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound
