"""StagedStore: one transaction's view of a shard's store; its writes reach the disk together or not at all."""

from ferric_ipc.errors import CommandError
from ferric_ipc.keys import as_key, as_value
from ferric_ipc.routing import shard_for
from ferricd.storage import Delete, Expire, Put

_KEPT = object()  # a staged TTL change: the value stays what the store holds


class StagedStore:
    """Reads see the transaction's own writes; writes wait in memory until ``commit``.

    Offers the part of BitcaskStore that ShardCommands' single-shard ops use, so
    those ops run unchanged inside a transaction. Every key must belong to this
    shard. ``commit`` writes one atomic batch (one record per key written).
    """

    def __init__(self, store, clock, shard_id, shard_count):
        self._store = store
        self._clock = clock
        self._shard_id = shard_id
        self._shard_count = shard_count
        self.settings = store.settings
        self._staged = {}  # key -> (value or _KEPT, expire_at_ms), or None once deleted

    def get_with_expiry(self, key):
        key = self._own(key)
        if key not in self._staged:
            return self._store.get_with_expiry(key)
        found = self._staged[key]
        if found is not None and found[0] is _KEPT:
            stored = self._store.get_with_expiry(key)
            found = None if stored is None else (stored[0], found[1])
        if found is None or (found[1] and found[1] <= self._clock()):
            return None
        return found

    def get(self, key):
        found = self.get_with_expiry(key)
        return None if found is None else found[0]

    def put(self, key, value, expire_at_ms=0):
        self._staged[self._own(key)] = (as_value(value, self.settings.max_value_bytes), expire_at_ms)

    def set_expiry(self, key, expire_at_ms):
        """Stage a TTL change; committed as a TTL-only record unless the value is staged too."""
        found = self.get_with_expiry(key)
        if found is None:
            return False
        key = self._own(key)
        staged = self._staged.get(key)
        self._staged[key] = (_KEPT if staged is None else staged[0], expire_at_ms)
        return True

    def delete(self, key):
        existed = self.get_with_expiry(key) is not None
        self._staged[self._own(key)] = None
        return existed

    def write_batch(self, ops):
        results = []
        for op in ops:
            if type(op) is Delete:
                results.append(self.delete(op.key))
            else:
                self.put(op.key, op.value, op.expire_at_ms)
                results.append(None)
        return results

    def commit(self):
        """Write every staged change as one atomic batch."""
        ops = [Delete(key) if found is None else Expire(key, found[1]) if found[0] is _KEPT else Put(key, *found)
               for key, found in self._staged.items()]
        if ops:
            self._store.write_batch(ops, atomic=True)

    def _own(self, key):
        key = as_key(key)
        if self._shard_count > 1 and shard_for(key, self._shard_count) != self._shard_id:
            raise CommandError(
                f"{key!r} lives on another shard: every key of a transaction needs the same {{hash tag}}",
                "WRONG_SHARD",
            )
        return key
