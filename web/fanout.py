"""Writing one frame to thousands of sockets at the cost of the system calls alone.

py-spy of `crash-push` with 10,000 clients (`tests/bench_push.py`): 84 % of its time in the
broadcast, of which 68 points inside the send system call and most of the rest in asyncio's
`transport.write` and `get_write_buffer_size` around it. Here a frame goes straight to the
socket (`os.write`) when its transport has nothing queued, which is nearly always; otherwise, and
for the rest of a short write, through `transport.write`, behind the bytes already waiting, so
each socket still receives its bytes in order. A failed write is handed to the transport, which
meets the same error and closes the connection the usual way. This runs in the event loop's
thread, so no other write to these sockets can come in between.

Threads were tried: the send releases the GIL, but taking it back after each of 10,000 short
calls costs more than the overlap saved (no gain measured with 2 threads on 2 cores).
"""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from typing import Protocol

FAILED = -1


class Reader(Protocol):
    transport: asyncio.Transport
    fd: int


def write_all(readers: Iterable[Reader], frame: bytes, max_queued: int) -> tuple[int, list[Reader], list[Reader]]:
    """Writes `frame` to every reader's socket. Returns how many got it, the readers whose
    connection is closing, and those with more than `max_queued` bytes waiting (too slow: the
    caller cuts them off); those two get nothing."""
    size = len(frame)
    write = os.write
    sent, closing, slow = 0, [], []
    for reader in readers:
        transport = reader.transport
        if transport.is_closing():
            closing.append(reader)
            continue
        queued = transport.get_write_buffer_size()
        if queued:
            if queued > max_queued:
                slow.append(reader)
                continue
            transport.write(frame)        # bytes are waiting: this frame goes behind them
        else:
            try:
                written = write(reader.fd, frame)
            except BlockingIOError:
                written = 0
            except OSError:
                written = FAILED
            if written != size:
                transport.write(frame if written == FAILED else frame[written:])
        sent += 1
    return sent, closing, slow
