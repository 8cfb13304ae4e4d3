"""How bytes are named and stored: BLAKE3 digests, optional zstd, optional AES-256-GCM.

See docs/repository-format.md ("Blobs" and "Encryption") for the byte layout this implements.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import blake3

from .errors import CorruptDataError

if TYPE_CHECKING:
    import zstandard

# cryptography and zstandard are imported where used: a plain repository (the default) needs neither,
# and every command pays for their ~20 modules at start-up otherwise (a cold cache reads each).


def _aesgcm(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag

    return InvalidTag

NONCE_SIZE = 12
TAG_SIZE = 16
RAW, ZSTD = 0, 1  # first byte of a framed payload
KEY_CHECK_PLAINTEXT = b"mobackup key check v1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


@dataclass(frozen=True)
class Keys:
    encryption: bytes  # AES-256-GCM key
    identity: bytes  # BLAKE3 key: blob names do not reveal plaintext digests


def derive_keys(secret: str, salt: bytes) -> Keys:
    material = hashlib.scrypt(
        secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=64, maxmem=64 << 20
    )
    return Keys(encryption=material[:32], identity=material[32:])


def make_key_check(keys: Keys) -> str:
    nonce = os.urandom(NONCE_SIZE)
    return (nonce + _aesgcm(keys.encryption).encrypt(nonce, KEY_CHECK_PLAINTEXT, b"key-check")).hex()


def key_matches(keys: Keys, key_check_hex: str) -> bool:
    raw = bytes.fromhex(key_check_hex)
    try:
        plain = _aesgcm(keys.encryption).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], b"key-check")
    except _invalid_tag():
        return False
    return plain == KEY_CHECK_PLAINTEXT


class Codec:
    """Digests and encodes blobs and metadata objects for one repository.

    A repository with neither compression nor encryption stores plaintext verbatim, so that its
    blobs can be checked with any BLAKE3 tool (`b3sum`).
    """

    def __init__(self, compression: str, keys: Keys | None, level: int = 3) -> None:
        self.compression = compression
        self.keys = keys
        self.level = level
        self.plain = compression == "none" and keys is None
        self._local = threading.local()

    def hasher(self) -> blake3.blake3:
        if self.keys is not None:
            return blake3.blake3(key=self.keys.identity)
        return blake3.blake3()

    def digest(self, data: bytes | memoryview) -> str:
        hasher = self.hasher()
        hasher.update(data)
        return hasher.hexdigest()

    def digest_fd(self, fd: int, also: Callable[[memoryview], None] | None = None) -> str:
        """Digest of a whole open file, hashed from the page cache through mmap (no copy into Python).
        `also` sees the same bytes (a second digest over them, without reading the file again)."""
        if os.fstat(fd).st_size == 0:
            return self.digest(b"")
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
            if also is not None:
                also(view)
            return self.digest(view)

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            import zstandard

            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level)
        return compressor

    def encode(self, data: bytes | memoryview, name: str, compress: bool | None = None) -> bytes | memoryview:
        """Stored form of `data`; `name` (the object's key) is bound in as AES-GCM associated data.

        In a plain repository the data itself is returned, uncopied."""
        if compress is None:
            compress = self.compression == "zstd"
        if self.plain and not compress:
            return data
        framed = bytes([RAW]) + bytes(data)
        if compress:
            packed = self._compressor().compress(data)
            if len(packed) + 1 < len(framed):
                framed = bytes([ZSTD]) + packed
        if self.keys is None:
            return framed
        nonce = os.urandom(NONCE_SIZE)
        return nonce + _aesgcm(self.keys.encryption).encrypt(nonce, framed, name.encode())

    def decode(self, stored: bytes, name: str, limit: int, framed: bool | None = None) -> bytes:
        """Plaintext of a stored object; raises CorruptDataError when it was altered, or when its
        compressed payload would exceed `limit` bytes (what the caller expects at most)."""
        if framed is None:
            framed = not self.plain
        if not framed:
            return stored
        if self.keys is not None:
            if len(stored) < NONCE_SIZE + TAG_SIZE + 1:
                raise CorruptDataError(f"{name}: truncated ({len(stored)} bytes)")
            try:
                stored = _aesgcm(self.keys.encryption).decrypt(
                    stored[:NONCE_SIZE], stored[NONCE_SIZE:], name.encode()
                )
            except _invalid_tag():
                raise CorruptDataError(f"{name}: authentication failed (corrupt or altered)") from None
        if not stored:
            raise CorruptDataError(f"{name}: empty object")
        kind, body = stored[0], stored[1:]
        if kind == RAW:
            return body
        if kind == ZSTD:
            return decompress(body, name, limit)
        raise CorruptDataError(f"{name}: unknown frame type {kind}")


def decompress(body: bytes, name: str, limit: int) -> bytes:
    """One zstd frame, never inflated beyond `limit` bytes: a frame of a few kilobytes can declare
    (or produce) gigabytes, and a repository is untrusted input."""
    import zstandard

    try:
        declared = zstandard.frame_content_size(body)  # -1 when the frame does not say
        if declared > limit:
            raise CorruptDataError(f"{name}: declares {declared} bytes uncompressed, more than the {limit} "
                                   "expected (corrupt or altered)")
        # A declared size is allocated as is (checked above); otherwise the output buffer is `limit`
        # bytes and a frame that produces more fails. One frame only, nothing after it.
        plain = zstandard.ZstdDecompressor().decompress(body, max_output_size=max(limit, 1),
                                                        allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise CorruptDataError(f"{name}: cannot decompress within the {limit} bytes expected ({error})") from None
    if len(plain) > limit:
        raise CorruptDataError(f"{name}: {len(plain)} bytes uncompressed, more than the {limit} expected")
    return plain
