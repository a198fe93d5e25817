"""Which shard owns a key: a stable hash of the key, or of its {hash tag}, modulo the shard count."""

from ferric_ipc.keys import key_hash64


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its shard (the Redis Cluster rule).

    If the key contains ``{`` followed later by ``}`` with at least one byte
    between them, only the bytes between the first ``{`` and the next ``}``
    count, so ``{user:42}:cart`` and ``{user:42}:profile`` share a shard.
    Otherwise the whole key counts.
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def shard_for(key: bytes, shard_count: int) -> int:
    """Shard index of an encoded key; identical in every process and Python version."""
    return key_hash64(hash_tag(key)) % shard_count


def shard_for_hashed(key: bytes, key_hash: int, shard_count: int) -> int:
    """``shard_for(key, shard_count)`` for a key whose ``key_hash64`` is ``key_hash`` already.

    Without a ``{`` the key is its own tag, so ``key_hash`` decides and the key
    is hashed once for both routing and the index (the local-read path).
    """
    return (key_hash if b"{" not in key else key_hash64(hash_tag(key))) % shard_count
