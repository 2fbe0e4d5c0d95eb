"""The push gateway's frame writer (web/fanout.py) on real sockets, and its schedule of full
garbage collections (streams/full_gc.py)."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from dataclasses import dataclass

from prometheus_client import REGISTRY

from streams import full_gc
from streams.full_gc import NEVER
from web import fanout


@dataclass
class Reader:
    transport: asyncio.Transport
    fd: int


class Keep(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def connected_pair() -> tuple[Reader, Keep, socket.socket]:
    """A transport of this loop (the gateway's side, with a small send buffer) and the peer's socket."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.socket()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        theirs.connect(listener.getsockname())
        ours, _ = listener.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setblocking(False)
    protocol = Keep()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
    return Reader(transport, ours.fileno()), protocol, theirs


async def read_exactly(sock: socket.socket, size: int, timeout: float = 10) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while len(data) < size:
            data += await loop.sock_recv(sock, size - len(data))
    return data


async def test_frames_arrive_whole_and_in_order_when_the_kernel_buffer_fills():
    reader, _, peer = await connected_pair()
    frames = [bytes([65 + i % 26]) * 3000 for i in range(40)]     # far more than both buffers hold
    received = b""
    for i, frame in enumerate(frames):
        sent, closing, slow = fanout.write_all([reader], frame, max_queued=10**9)
        assert (sent, closing, slow) == (1, [], [])
        if i % 10 == 9:
            # The peer reads while the loop has not run: the kernel has room again, but bytes
            # still wait on the transport; the next frame must go behind them.
            assert reader.transport.get_write_buffer_size() > 0, "the test must make the transport queue bytes"
            with contextlib.suppress(BlockingIOError):
                received += peer.recv(65536)
            time.sleep(0.02)                 # the kernel moves its own queue on; the loop does not run
    expected = b"".join(frames)
    assert received + await read_exactly(peer, len(expected) - len(received)) == expected
    reader.transport.close()
    peer.close()


async def test_a_client_over_the_bound_is_reported_slow_and_gets_nothing_more():
    reader, _, peer = await connected_pair()
    frame = b"x" * 50_000
    fanout.write_all([reader], frame, max_queued=10_000)            # fills the kernel, queues the rest
    queued = reader.transport.get_write_buffer_size()
    assert queued > 10_000
    sent, closing, slow = fanout.write_all([reader], frame, max_queued=10_000)
    assert (sent, closing, slow) == (0, [], [reader])
    assert reader.transport.get_write_buffer_size() == queued
    reader.transport.close()
    peer.close()


async def test_a_failed_write_closes_that_connection_and_the_others_still_get_the_frame():
    gone, gone_protocol, gone_peer = await connected_pair()
    alive, _, alive_peer = await connected_pair()
    gone_peer.close()                                                # the player closed the tab
    frame = b"frame"
    for _ in range(3):      # the first write after the peer closed may still succeed (RST comes back)
        fanout.write_all([gone, alive], frame, max_queued=10**9)
        await asyncio.sleep(0.05)
    async with asyncio.timeout(5):
        await gone_protocol.lost
    assert gone.transport.is_closing()
    sent, closing, _ = fanout.write_all([gone, alive], frame, max_queued=10**9)
    assert (sent, closing) == (1, [gone])
    assert await read_exactly(alive_peer, 4 * len(frame)) == frame * 4
    alive.transport.close()
    alive_peer.close()


async def test_full_collections_run_on_their_schedule_not_cpythons():
    def full_collections() -> float:
        return REGISTRY.get_sample_value("gc_full_pause_seconds_count") or 0.0

    before_threshold = gc.get_threshold()
    before = full_collections()
    stop = full_gc.install(every_s=0.2)
    try:
        assert gc.get_threshold() == (*before_threshold[:2], NEVER)
        async with asyncio.timeout(10):
            while full_collections() < before + 2:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
    async with asyncio.timeout(5):
        while gc.get_threshold() != before_threshold:
            await asyncio.sleep(0.05)
