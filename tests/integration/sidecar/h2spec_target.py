"""The sidecar's HTTP/2 gRPC server with a stand-in service, for h2spec: ``python h2spec_target.py PORT``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import uvloop

from guardedmodel_sidecar.grpc_http2 import Http2GrpcServer


class EchoService:
    async def unary(self, method: str, body: bytes) -> bytes:
        return body

    async def stream(self, method: str, messages: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for message in messages:
            yield message


async def serve(port: int) -> None:
    server = Http2GrpcServer(EchoService(), max_message=1 << 20)  # type: ignore[arg-type]
    await server.start("127.0.0.1", port)
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
