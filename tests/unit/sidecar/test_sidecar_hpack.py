"""The HPACK decoder against the reference encoder of the ``hpack`` package: indexed and literal
fields, Huffman strings, dynamic-table eviction and size updates, and blocks it must refuse."""

from __future__ import annotations

import random

import hpack
import pytest

from guardedmodel_sidecar.protocol.hpack_codec import Decoder, HpackError, encode_headers, encode_literal

GRPC_HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
    (b":authority", b"127.0.0.1:8001"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.85 grpc-c/45.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"),
]


@pytest.mark.parametrize("huffman", [True, False])
def test_a_connection_of_blocks_decodes_as_encoded(huffman: bool) -> None:
    rng = random.Random(7)
    encoder, decoder = hpack.Encoder(), Decoder()
    for i in range(300):
        headers = list(GRPC_HEADERS)
        headers.append((b"grpc-timeout", f"{rng.randint(1, 99999)}m".encode()))
        headers.append((b"x-req", bytes(rng.randint(32, 126) for _ in range(rng.randint(0, 400)))))
        if i % 50 == 49:
            encoder.header_table_size = rng.choice([0, 256, 4096])
        assert list(decoder.decode(encoder.encode(headers, huffman=huffman))) == headers


def test_repeated_headers_are_indexed_and_decoded_from_the_table() -> None:
    encoder, decoder = hpack.Encoder(), Decoder()
    decoder.decode(encoder.encode(GRPC_HEADERS))
    block = encoder.encode(GRPC_HEADERS)
    assert len(block) == len(GRPC_HEADERS)  # one byte per field: all from the dynamic/static table
    assert list(decoder.decode(block)) == GRPC_HEADERS
    assert decoder.decode(block) is decoder.decode(block)  # served from the cache


def test_never_indexed_fields_decode() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode([hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")])
    assert Decoder().decode(block) == ((b"authorization", b"secret"),)


def test_a_cached_block_is_decoded_again_once_the_dynamic_table_changes() -> None:
    reference, decoder = hpack.Decoder(), Decoder()
    first = b"\x40\x01a\x01A"  # literal with indexing: ("a", "A") becomes index 62
    repeat = b"\xbe"  # index 62
    second = b"\x40\x01b\x01B"  # ("b", "B") becomes 62, ("a", "A") moves to 63
    for block in (first, repeat, repeat, second, repeat):
        want = [(n.encode(), v.encode()) for n, v in reference.decode(block)]
        assert list(decoder.decode(block)) == want
    assert decoder.decode(repeat) == ((b"b", b"B"),)


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        (b"\x80", "index 0"),
        (b"\xff\x00", "beyond the dynamic table"),  # index 127 with an empty dynamic table
        (b"\x40\x85ab", "inside a string"),
        (b"\x3f\xe2\x1f", "above the allowed"),  # table size update to 4096 + 1
        (b"\xff" + b"\xff" * 6 + b"\x01", "too large"),
        (b"\xff", "inside an integer"),
        (b"\x82\x20", "must come before"),  # a table size update after a header field
    ],
)
def test_broken_blocks_are_refused(block: bytes, problem: str) -> None:
    with pytest.raises(HpackError, match=problem):
        Decoder().decode(block)


def test_what_the_server_sends_decodes_with_the_reference_decoder() -> None:
    long_message = "x" * 3000
    block = encode_headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
    block += encode_literal(b"grpc-message", long_message.encode())
    assert hpack.Decoder().decode(block) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
        ("grpc-message", long_message),
    ]
