"""SampledEviction: what an over-full keyspace evicts: the least recently used of a few of its keys, as Redis does.

Each key's last use is a byte of ``access_clock`` (reads set it, in clients
too, and writes). The clock ticks each time 1/TICKS_PER_TURNOVER of the
evicting keyspaces' bound has been written into them, so a key's age in
ticks says how much of its keyspace was written since it was last used. To free room, a hand moves
over the key directory's slots; among each SAMPLES keys of an over-full
keyspace it meets, it evicts the one used longest ago (Redis evicts the
oldest of ``maxmemory-samples`` = 5 random keys; the slots are in hash order,
which is as good as random here). Keys older than OLD_AGE that it passes by
are pinned at that age, so that none wraps round from old to young.

The newest writes of a keyspace, the last quarter of its bound written
(RECENT_TICKS of TICKS_PER_TURNOVER), are never chosen, whatever the samples
hold: the hand compares each record's ``seq`` with the seq at which that
quarter began.

Rejected: CLOCK with a reference bit per key, cleared as the hand passes.
Its promise ("evicted only if unused for a whole turn of the hand") rests
on the order of slots, and the table reorders them whenever it is rebuilt:
it grows, or sheds the markers deletes leave, which under steady eviction
happens every few hundred evictions. A key the hand had just cleared could
then come up again at once and be evicted though read moments before. Ages
do not depend on where the hand is.

The hand reads the header and the start of the key of each slot it meets
(to know its keyspace, its seq and, for a victim, its key) and looks at a
bounded number of slots per call, so a write never waits long for it. What
one call could not free, the next write or the shard's housekeeping tick does.
"""

from collections import deque

from ferricd.storage.records import HEADER, HEADER_BYTES

SAMPLES = 5
TICKS_PER_TURNOVER = 32
OLD_AGE = 192  # below 256, where a byte's age would wrap round to 0
RECENT_TICKS = 8  # a keyspace's writes in its last 8/32 of a turnover are never evicted
HEAD_KEY_BYTES = 64  # key bytes read with the header: a longer key of a victim takes a second read


class SampledEviction:
    """The hand of one shard. ``victims`` chooses; the store deletes them (with tombstones)."""

    def __init__(self, keydir, accounts, clock, next_seq):
        """``next_seq``: the seq of the store's next write (what was written before it is not recent)."""
        self.keydir = keydir
        self.accounts = accounts
        self.clock = clock
        self.hand = 0
        table = accounts.table
        self._tick_bytes = max(1, sum(table.shard_max_bytes[n] for n in table.evictable) // TICKS_PER_TURNOVER)
        self._written_bytes = 0  # into evicting keyspaces, since the last tick
        # Per evicting keyspace: bytes written since its last mark, and the seqs of its last RECENT_TICKS
        # marks (one per 1/TICKS_PER_TURNOVER of its bound written), oldest first.
        self._keyspace_ticks = {n: max(1, table.shard_max_bytes[n] // TICKS_PER_TURNOVER) for n in table.evictable}
        self._keyspace_written = dict.fromkeys(table.evictable, 0)
        self._marks = {n: deque([next_seq], maxlen=RECENT_TICKS) for n in table.evictable}

    def written(self, key, record_len, next_seq):
        """Count a write of ``key`` (made before ``next_seq``): the clocks tick as evicting keyspaces are written."""
        number = self.accounts.table.of(key)
        if number not in self._marks:
            return
        self._written_bytes += record_len
        if self._written_bytes >= self._tick_bytes:
            self._written_bytes = 0
            self.clock.tick()
        self._keyspace_written[number] += record_len
        if self._keyspace_written[number] >= self._keyspace_ticks[number]:
            self._keyspace_written[number] = 0
            self._marks[number].append(next_seq)

    def victims(self, over, max_slots, now_ms):
        """Walk up to ``max_slots`` slots (one turn at most) until ``over`` (``{keyspace number: bytes to free}``)
        is freed.

        Returns ``(victims, expired)``: ``victims`` is ``[(key, key_hash, keyspace number)]``
        to delete, ``expired`` the slots of entries met that have expired (the store drops
        them as the expiry sweep would). ``over`` is updated in place.
        """
        index, accounts, clock, files = self.keydir.index, self.accounts, self.clock, self.keydir.files
        recent_from = {number: self._marks[number][0] for number in over}
        # The header and enough of the key to tell its keyspace, and usually all of it: one read per slot.
        head_bytes = max(accounts.head_bytes, HEADER_BYTES + HEAD_KEY_BYTES)
        victims, expired, sample = [], [], []
        visited = 0
        max_slots = min(max_slots, index.capacity)  # a slot met twice could be chosen twice
        while over and visited < max_slots:
            start = self.hand if self.hand < index.capacity else 0
            end = min(index.capacity, start + max_slots - visited)
            visited += end - start
            self.hand = end
            for slot, key_hash, file_id, offset, record_len, expire_at_ms in index.entries(start, end):
                head = files.read(file_id, offset, head_bytes)
                number = accounts.of_head(head)
                if number not in over:
                    continue
                if expire_at_ms and expire_at_ms <= now_ms:
                    expired.append(slot)
                    self._freed(over, number, record_len)
                elif HEADER.unpack_from(head)[1] >= recent_from[number]:
                    continue  # among the newest writes
                else:
                    sample.append((clock.age(key_hash), key_hash, file_id, offset, record_len, number, head))
                    if len(sample) < SAMPLES:
                        continue
                    self._take_oldest(sample, over, victims)
                if not over:
                    self.hand = slot + 1
                    break
            if self.hand >= index.capacity:
                self.hand = 0
        if over and sample:  # out of slots to look at: the best of what was seen
            self._take_oldest(sample, over, victims)
        return victims, expired

    def _take_oldest(self, sample, over, victims):
        """Add the oldest entry of ``sample`` still wanted by ``over`` to ``victims``, and empty the sample."""
        for age, key_hash, *_rest in sample:
            if age > OLD_AGE:
                self.clock.set_age(key_hash, OLD_AGE)
        wanted = [entry for entry in sample if entry[5] in over]
        sample.clear()
        if not wanted:
            return
        _age, key_hash, file_id, offset, record_len, number, head = max(wanted, key=lambda entry: entry[0])
        key_len = HEADER.unpack_from(head)[4]
        key = head[HEADER_BYTES:HEADER_BYTES + key_len]
        if len(key) < key_len:
            key = self.keydir.files.read(file_id, offset + HEADER_BYTES, key_len)
        self._freed(over, number, record_len)
        victims.append((bytes(key), key_hash, number))

    @staticmethod
    def _freed(over, number, record_len):
        over[number] -= record_len
        if over[number] <= 0:
            del over[number]
