"""Provably fair crash points (DESIGN section 6): the one place for the fairness algorithm.

Per channel a hash chain h_N (random) -> h_{k-1} = SHA-256(h_k) -> ... -> h_0 (terminator,
published with a public salt). Term k uses h_k; revealing it lets anyone check that it hashes
to the published terminator in k steps, and recompute the crash point:

    digest = HMAC-SHA512(key = salt bytes, msg = hex(h_k) as ASCII)
    r      = first 52 bits of digest
    crash  = floor((10000 - edge_bps) * 2^52 / ((2^52 - r) * 100))   # hundredths, integers only
    crash  = min(max(crash, 100), max_multiple_x100)
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TWO_52 = 1 << 52
DEFAULT_CHECKPOINT_EVERY = 1024


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hmac_digest(hash_k: bytes, salt: bytes) -> bytes:
    return hmac.new(salt, hash_k.hex().encode("ascii"), hashlib.sha512).digest()


def crash_point_from_digest(digest: bytes, edge_bps: int, max_multiple_x100: int) -> int:
    r = int.from_bytes(digest[:7], "big") >> 4          # the first 52 bits
    crash = (10000 - edge_bps) * TWO_52 // ((TWO_52 - r) * 100)
    return min(max(crash, 100), max_multiple_x100)


def crash_point_x100(hash_k: bytes, salt: bytes, edge_bps: int, max_multiple_x100: int) -> int:
    return crash_point_from_digest(hmac_digest(hash_k, salt), edge_bps, max_multiple_x100)


def links_to(hash_k: bytes, anchor: bytes, steps: int) -> bool:
    """True when SHA-256 applied `steps` times to hash_k gives anchor."""
    h = hash_k
    for _ in range(steps):
        h = sha256(h)
    return hmac.compare_digest(h, anchor)


@dataclass(frozen=True)
class Chain:
    """The secret half of a chain: enough to derive any h_k quickly, never published."""
    length: int
    seed: bytes                 # h_N
    salt: bytes
    checkpoint_every: int
    checkpoints: bytes          # h_0, h_c, h_2c, ... concatenated (32 bytes each)

    @property
    def terminator(self) -> bytes:
        return self.checkpoints[:32]

    def hash_at(self, k: int) -> bytes:
        """h_k for 1 <= k <= length, from the nearest checkpoint above k."""
        if not 0 <= k <= self.length:
            raise IndexError(f"chain index {k} outside 0..{self.length}")
        slot = -(-k // self.checkpoint_every)                # ceil(k / every)
        top = slot * self.checkpoint_every
        if top >= self.length:
            h, top = self.seed, self.length
        else:
            h = self.checkpoints[slot * 32:(slot + 1) * 32]
        for _ in range(top - k):
            h = sha256(h)
        return h


def generate_chain(length: int, checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
                   seed: bytes | None = None, salt: bytes | None = None) -> Chain:
    """A fresh chain of `length` terms: h_N random, every hash computed once (about 1 s per
    million on one core), keeping one checkpoint every `checkpoint_every` indexes."""
    if length < 1:
        raise ValueError("a chain needs at least one term")
    seed = seed if seed is not None else secrets.token_bytes(32)
    salt = salt if salt is not None else secrets.token_bytes(32)
    checkpoints: dict[int, bytes] = {}
    h = seed
    for k in range(length, -1, -1):
        if k % checkpoint_every == 0:
            checkpoints[k] = h
        if k:
            h = sha256(h)
    joined = b"".join(checkpoints[k] for k in sorted(checkpoints))
    return Chain(length=length, seed=seed, salt=salt, checkpoint_every=checkpoint_every,
                 checkpoints=joined)


@dataclass(frozen=True)
class TermProof:
    """What TermCrashed reveals about one term."""
    chain_index: int
    hash_hex: str
    digest_hex: str
    crash_x100: int


def prove(chain: Chain, k: int, edge_bps: int, max_multiple_x100: int) -> TermProof:
    h = chain.hash_at(k)
    digest = hmac_digest(h, chain.salt)
    return TermProof(chain_index=k, hash_hex=h.hex(), digest_hex=digest.hex(),
                     crash_x100=crash_point_from_digest(digest, edge_bps, max_multiple_x100))
