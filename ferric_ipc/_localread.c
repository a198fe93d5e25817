/* Local-read hot path in C: the stable key hash and a verified lookup in a shard's mapped index.
 *
 * Optional: ferric_ipc.local_reads and ferric_ipc.keys use it when it was built and fall back to
 * their pure-Python equivalents otherwise. It must answer exactly as they do (tests compare the
 * two), so the byte layouts below mirror ferric_ipc/index_layout.py and ferric_ipc/file_layout.py;
 * LAYOUT exports them and local_reads refuses this module if they disagree.
 *
 * lookup() takes buffer exports on the maps it reads, so no thread can close a map under it (it
 * keeps the GIL except inside zlib.crc32 of a long record, where the exports still hold). Slots
 * are read seqlock-style with acquire loads and fences; the data records a slot points at are
 * append-only and never change. Little-endian hosts only, like the layouts.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the index and record layouts are little-endian; this build falls back to pure Python"
#endif

/* ---- byte layouts (see index_layout.py, file_layout.py) ---------------------------------- */

#define HEADER_BYTES 64
#define STATE_AT 12
#define CAPACITY_AT 24
#define STATE_LIVE 0
#define SLOT_BYTES 32
#define SLOT_SEQ_AT 0
#define SLOT_FILE_ID_AT 4
#define SLOT_HASH_AT 8
#define SLOT_OFFSET_AT 16
#define SLOT_RECORD_LEN_AT 20
#define SLOT_EXPIRE_AT 24
#define HASH_EMPTY 0
#define RESERVED_HASHES 2
#define RECORD_HEADER_BYTES 29 /* crc u32, seq u64, expire u64, flags u8, key_len u32, value_len u32 */
#define RECORD_CRC_BYTES 4 /* the crc32 field leads; the CRC covers every byte after it */
#define RECORD_FLAGS_AT 20
#define RECORD_KEY_LEN_AT 21
#define RECORD_VALUE_LEN_AT 25
#define FLAG_TOMBSTONE 0x01
#define ACCESS_HEADER_BYTES 64 /* file_layout.ACCESS_HEADER: state u32 at 12, clock u8 at 24 */
#define ACCESS_STATE_AT 12
#define ACCESS_CLOCK_AT 24
/* A writer holds a slot odd for microseconds (more if it is descheduled): wait up to about as long
 * as a round trip to the shard would take, then let the shard answer. The Python path's SEQ_SPINS
 * iterations take about as long. */
#define SEQ_WAIT_NS 50000

/* read_slot takes file_id and record_len as the high halves of the 64-bit words at SLOT_SEQ_AT
 * and SLOT_OFFSET_AT, and every slot load is of an aligned word. */
_Static_assert(SLOT_FILE_ID_AT == SLOT_SEQ_AT + 4 && SLOT_SEQ_AT % 8 == 0, "file_id: high half of word 0");
_Static_assert(SLOT_RECORD_LEN_AT == SLOT_OFFSET_AT + 4 && SLOT_OFFSET_AT % 8 == 0, "record_len: high half");
_Static_assert(SLOT_HASH_AT % 8 == 0 && SLOT_EXPIRE_AT % 8 == 0, "64-bit slot fields are aligned words");

/* Unaligned little-endian loads from mapped bytes. The slot words are 8-byte aligned (the map is
 * page-aligned and every field sits inside its own aligned word), so the seqlock loads are atomic. */
static inline uint32_t le32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t le64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t load_acquire32(const unsigned char *p) {
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE);
}
static inline uint64_t load_relaxed64(const unsigned char *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
}

/* ---- BLAKE2b with an 8-byte digest, unkeyed (RFC 7693) ----------------------------------- */

static const uint64_t blake2b_iv[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

#define G(a, b, c, d, x, y)           \
    do {                              \
        v[a] = v[a] + v[b] + (x);     \
        v[d] = rotr64(v[d] ^ v[a], 32); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 24); \
        v[a] = v[a] + v[b] + (y);     \
        v[d] = rotr64(v[d] ^ v[a], 16); \
        v[c] = v[c] + v[d];           \
        v[b] = rotr64(v[b] ^ v[c], 63); \
    } while (0)

static void blake2b_compress(uint64_t h[8], const unsigned char block[128], uint64_t counter, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 16; i++) m[i] = le64(block + 8 * i);
    for (int i = 0; i < 8; i++) { v[i] = h[i]; v[i + 8] = blake2b_iv[i]; }
    v[12] ^= counter; /* keys are at most 64 KiB: the counter's high word stays 0 */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = blake2b_sigma[r];
        G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

/* keys.key_hash64: the first 8 digest bytes as a little-endian integer, moved above 0 and 1. */
static uint64_t key_hash64(const unsigned char *key, size_t len) {
    uint64_t h[8];
    unsigned char block[128];
    memcpy(h, blake2b_iv, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* depth 1, fanout 1, no key, digest length 8 */
    uint64_t counter = 0;
    while (len > 128) {
        counter += 128;
        blake2b_compress(h, key, counter, 0);
        key += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    memcpy(block, key, len);
    blake2b_compress(h, block, counter + len, 1);
    return h[0] < RESERVED_HASHES ? h[0] + RESERVED_HASHES : h[0];
}

/* ---- CRC-32 (IEEE, as zlib.crc32), slicing by 8 ------------------------------------------ */

static uint32_t crc_table[8][256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320U ^ (c >> 1) : c >> 1;
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++)
            crc_table[t][n] = (crc_table[t - 1][n] >> 8) ^ crc_table[0][crc_table[t - 1][n] & 0xFF];
}

static uint32_t crc32_ieee(const unsigned char *p, size_t len) {
    uint32_t c = 0xFFFFFFFFU;
    while (len >= 8) {
        uint32_t lo = le32(p) ^ c, hi = le32(p + 4);
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^ crc_table[5][(lo >> 16) & 0xFF] ^
            crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
            crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) c = crc_table[0][(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFU;
}

/* zlib.crc32 (braided, about 2.5x the tables above on long records), found at import; NULL if
 * the zlib module is missing. Worth its call overhead only past a few hundred bytes. */
static PyObject *zlib_crc32;
#define ZLIB_CRC_MIN_BYTES 512

static uint32_t record_crc32(const unsigned char *p, size_t len) {
    if (zlib_crc32 != NULL && len >= ZLIB_CRC_MIN_BYTES && len <= (size_t)PY_SSIZE_T_MAX) {
        PyObject *view = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)len, PyBUF_READ);
        PyObject *crc = view == NULL ? NULL : PyObject_CallOneArg(zlib_crc32, view);
        Py_XDECREF(view);
        if (crc != NULL) {
            unsigned long value = PyLong_AsUnsignedLong(crc);
            Py_DECREF(crc);
            if (!PyErr_Occurred()) return (uint32_t)value;
        }
        PyErr_Clear(); /* whatever went wrong there, the tables still give the answer */
    }
    return crc32_ieee(p, len);
}

/* ---- lookup ------------------------------------------------------------------------------- */

static PyObject *MISSING, *FALLBACK, *SLOW; /* answers other than a hit; set by configure() */

typedef enum { SLOT_GONE, SLOT_ANSWERED } slot_outcome;

/* (value, expire_at_ms); steals the reference to value. */
static PyObject *hit(PyObject *value, uint64_t expire_at_ms) {
    PyObject *expire = PyLong_FromUnsignedLongLong(expire_at_ms);
    PyObject *pair = expire == NULL ? NULL : PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(value);
        Py_XDECREF(expire);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, value);
    PyTuple_SET_ITEM(pair, 1, expire);
    return pair;
}

/* Reads one slot whose hash matched. SLOT_GONE: the slot no longer holds key_hash (keep probing);
 * SLOT_ANSWERED: *answer is a new reference (a hit tuple, MISSING, FALLBACK or SLOW), or NULL
 * with a Python error set. */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* Called once a slot was seen odd (or torn): false once SEQ_WAIT_NS have passed since *since_ns. */
static int keep_waiting(uint64_t *since_ns) {
    cpu_relax();
    uint64_t now = monotonic_ns();
    if (*since_ns == 0) *since_ns = now;
    return now - *since_ns < SEQ_WAIT_NS;
}

static slot_outcome read_slot(const unsigned char *slot, const unsigned char *key, Py_ssize_t key_len,
                              uint64_t key_hash, long long now_ms, PyObject *views, PyObject **answer) {
    uint64_t waiting_since_ns = 0;
    for (;;) {
        uint32_t seq = load_acquire32(slot + SLOT_SEQ_AT);
        if (seq & 1) { /* the shard is writing this slot */
            if (keep_waiting(&waiting_since_ns)) continue;
            break;
        }
        uint64_t seq_and_file = load_relaxed64(slot + SLOT_SEQ_AT); /* seq | file_id */
        uint64_t stored_hash = load_relaxed64(slot + SLOT_HASH_AT);
        uint64_t position = load_relaxed64(slot + SLOT_OFFSET_AT); /* offset | record_len */
        uint64_t expire_at_ms = load_relaxed64(slot + SLOT_EXPIRE_AT);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (load_acquire32(slot + SLOT_SEQ_AT) != seq) { /* torn copy: read it again */
            if (keep_waiting(&waiting_since_ns)) continue;
            break;
        }
        if (stored_hash != key_hash) return SLOT_GONE;
        uint32_t file_id = (uint32_t)(seq_and_file >> 32);
        uint64_t offset = position & 0xFFFFFFFFU, record_len = position >> 32;

        PyObject *file_key = PyLong_FromUnsignedLong(file_id);
        if (file_key == NULL) { *answer = NULL; return SLOT_ANSWERED; }
        PyObject *view = PyDict_GetItemWithError(views, file_key); /* borrowed */
        Py_DECREF(file_key);
        if (view == NULL) {
            if (PyErr_Occurred()) { *answer = NULL; return SLOT_ANSWERED; }
            *answer = Py_NewRef(SLOW); /* file not mapped yet: Python maps it */
            return SLOT_ANSWERED;
        }
        Py_buffer data;
        if (PyObject_GetBuffer(view, &data, PyBUF_SIMPLE) < 0) { *answer = NULL; return SLOT_ANSWERED; }
        if (offset + record_len > (uint64_t)data.len) {
            PyBuffer_Release(&data);
            *answer = Py_NewRef(SLOW); /* past the mapped length: the file grew, Python re-maps */
            return SLOT_ANSWERED;
        }
        const unsigned char *record = (const unsigned char *)data.buf + offset;
        PyObject *result;
        if (record_len < RECORD_HEADER_BYTES) {
            result = Py_NewRef(FALLBACK);
        } else {
            uint32_t stored_key_len = le32(record + RECORD_KEY_LEN_AT);
            uint32_t value_len = le32(record + RECORD_VALUE_LEN_AT);
            if (stored_key_len != (uint64_t)key_len ||
                (uint64_t)RECORD_HEADER_BYTES + stored_key_len + value_len != record_len ||
                (record[RECORD_FLAGS_AT] & FLAG_TOMBSTONE) ||
                memcmp(record + RECORD_HEADER_BYTES, key, (size_t)key_len) != 0 ||
                record_crc32(record + RECORD_CRC_BYTES, record_len - RECORD_CRC_BYTES) != le32(record)) {
                /* another key with this hash, or a record that does not check out: ask the shard */
                result = Py_NewRef(FALLBACK);
            } else if (expire_at_ms && expire_at_ms <= (uint64_t)now_ms) { /* unsigned, as Python compares */
                result = Py_NewRef(MISSING);
            } else {
                PyObject *value = PyBytes_FromStringAndSize(
                    (const char *)record + RECORD_HEADER_BYTES + key_len, (Py_ssize_t)value_len);
                result = value == NULL ? NULL : hit(value, expire_at_ms);
            }
        }
        PyBuffer_Release(&data);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (result != NULL && load_acquire32(slot + SLOT_SEQ_AT) != seq) {
            Py_DECREF(result); /* the slot moved on while we read: start over */
            if (keep_waiting(&waiting_since_ns)) continue;
            break;
        }
        *answer = result;
        return SLOT_ANSWERED;
    }
    *answer = Py_NewRef(FALLBACK); /* seq stuck odd: a writer died mid-update, or is very slow */
    return SLOT_ANSWERED;
}

/* ---- a data file mapped past its end ----------------------------------------------------- */

/* Python's mmap refuses a length past the file's size, so a growing active file had to be
 * re-mapped (or read with pread) for every record written after the map. A mapping may extend
 * past the end of the file: its pages become readable as the file grows into them, and a reader
 * only touches records an index slot points at, which the shard wrote before publishing the slot.
 * (A page wholly past the end would raise SIGBUS; a slot pointing there would need a 64-bit hash
 * match with a corrupt table.) The object exports the bytes read-only and unmaps when the last
 * view on it goes. */
typedef struct {
    PyObject_HEAD
    void *address;
    Py_ssize_t length;
} FileWindow;

static int window_getbuffer(PyObject *self, Py_buffer *view, int flags) {
    FileWindow *window = (FileWindow *)self;
    return PyBuffer_FillInfo(view, self, window->address, window->length, 1, flags);
}

static void window_dealloc(PyObject *self) {
    FileWindow *window = (FileWindow *)self;
    if (window->address != NULL) munmap(window->address, (size_t)window->length);
    Py_TYPE(self)->tp_free(self);
}

static PyBufferProcs window_as_buffer = {window_getbuffer, NULL};

static PyTypeObject FileWindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ferric_ipc._localread.FileWindow",
    .tp_basicsize = sizeof(FileWindow),
    .tp_dealloc = window_dealloc,
    .tp_as_buffer = &window_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A read-only shared mapping of a file, possibly longer than the file; unmapped when freed.",
};

PyDoc_STRVAR(map_window_doc,
"map_window(fd, length) -> FileWindow\n\n"
"Map ``length`` bytes of the file open at ``fd`` read-only and shared, even past its end.\n"
"Bytes past the end must not be read until the file has grown over them.");

static PyObject *map_window(PyObject *module, PyObject *args) {
    int fd;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "in:map_window", &fd, &length)) return NULL;
    if (length <= 0) {
        PyErr_SetString(PyExc_ValueError, "map_window() needs a positive length");
        return NULL;
    }
    FileWindow *window = PyObject_New(FileWindow, &FileWindowType);
    if (window == NULL) return NULL;
    window->address = NULL;
    window->length = length;
    void *address = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, 0);
    if (address == MAP_FAILED) {
        Py_DECREF(window);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    window->address = address;
    return (PyObject *)window;
}

PyDoc_STRVAR(lookup_doc,
"lookup(index_map, key, key_hash, now_ms, views) -> (value, expire_at_ms) | MISSING | FALLBACK | SLOW\n\n"
"Probe a mapped shard index for the encoded ``key`` whose key_hash64 is ``key_hash``.\n"
"``views`` maps file ids to buffers of the shard's data files. SLOW means the table is not\n"
"live, or the record lies in a file (or part of one) not in ``views``: the caller takes the\n"
"pure-Python path, which re-opens and re-maps. ``now_ms`` is wall-clock milliseconds.");

/* The answer for one key in one mapped table (see lookup's doc); NULL with an exception set on error. */
static PyObject *probe(PyObject *index_map, const unsigned char *key, Py_ssize_t key_len, uint64_t key_hash,
                       long long now_ms, PyObject *views) {
    Py_buffer table;
    if (PyObject_GetBuffer(index_map, &table, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *base = (const unsigned char *)table.buf;
    PyObject *answer = NULL;
    if (table.len < HEADER_BYTES || ((uintptr_t)base & 7)) {
        answer = Py_NewRef(SLOW);
        goto done;
    }
    uint64_t capacity = le64(base + CAPACITY_AT);
    if (capacity == 0 || capacity > (uint64_t)(table.len - HEADER_BYTES) / SLOT_BYTES ||
        load_acquire32(base + STATE_AT) != STATE_LIVE) {
        answer = Py_NewRef(SLOW);
        goto done;
    }
    uint64_t slot = key_hash % capacity;
    for (uint64_t probes = 0; probes < capacity; probes++) {
        const unsigned char *at = base + HEADER_BYTES + slot * SLOT_BYTES;
        uint64_t stored = load_relaxed64(at + SLOT_HASH_AT);
        if (stored == HASH_EMPTY) {
            answer = Py_NewRef(MISSING);
            break;
        }
        /* A slot that stopped holding key_hash while we looked was deleted or reused: probe on. */
        if (stored == key_hash &&
            read_slot(at, key, key_len, key_hash, now_ms, views, &answer) == SLOT_ANSWERED) {
            break;
        }
        if (++slot == capacity) slot = 0;
    }
    if (answer == NULL && !PyErr_Occurred()) answer = Py_NewRef(FALLBACK); /* probed every slot */
    /* A miss or hit is only as good as the table it came from: if the table was retired while
     * probing, the key may have moved to its replacement. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (answer != NULL && answer != FALLBACK && answer != SLOW &&
        load_acquire32(base + STATE_AT) != STATE_LIVE) {
        Py_SETREF(answer, Py_NewRef(SLOW));
    }
done:
    PyBuffer_Release(&table);
    return answer;
}

static PyObject *lookup(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "lookup() takes index_map, key, key_hash, now_ms, views");
        return NULL;
    }
    if (!PyBytes_Check(args[1]) || !PyDict_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "lookup() needs key as bytes and views as a dict");
        return NULL;
    }
    uint64_t key_hash = PyLong_AsUnsignedLongLong(args[2]);
    if (key_hash == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    long long now_ms = PyLong_AsLongLong(args[3]);
    if (now_ms == -1 && PyErr_Occurred()) return NULL;
    return probe(args[0], (const unsigned char *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), key_hash,
                 now_ms, args[4]);
}

/* The shard of an encoded key (ferric_ipc.routing.shard_for): its {hash tag}'s hash, or the key's own. */
static uint64_t route(const unsigned char *key, Py_ssize_t key_len, uint64_t key_hash, uint64_t shard_count) {
    const unsigned char *tag_open = memchr(key, '{', (size_t)key_len);
    if (tag_open != NULL) {
        const unsigned char *after = tag_open + 1;
        const unsigned char *tag_close = memchr(after, '}', (size_t)(key + key_len - after));
        if (tag_close != NULL && tag_close > after) return key_hash64(after, (size_t)(tag_close - after)) % shard_count;
    }
    return key_hash % shard_count;
}

PyDoc_STRVAR(lookup_many_doc,
"lookup_many(keys, shard_count, now_ms, state_of, values=False) -> answers\n\n"
"lookup() of every encoded key of the list ``keys`` in its shard's table: the key is hashed and routed\n"
"here (as key_hash64 and ferric_ipc.routing.shard_for). ``state_of(shard)`` is called once per shard the\n"
"keys route to and returns ``(index_map, views, access, mask)``, or None for a shard the caller reads\n"
"another way: its keys answer SLOW. ``access`` is the shard's mapped access times (or None): a hit marks\n"
"its key used there, as LocalShardReader.mark_used does. Returns the answers in the order of ``keys``;\n"
"with ``values``, a hit's answer is its value alone and a missing key's is None (FALLBACK and SLOW stay).");

/* LocalShardReader.mark_used in C: copy the clock into the key's bucket, while the file is live. */
static int mark_used(PyObject *access, uint64_t mask, uint64_t key_hash) {
    Py_buffer times;
    if (PyObject_GetBuffer(access, &times, PyBUF_WRITABLE) < 0) return -1;
    unsigned char *base = (unsigned char *)times.buf;
    if (times.len >= ACCESS_HEADER_BYTES && mask < (uint64_t)(times.len - ACCESS_HEADER_BYTES) &&
        ((uintptr_t)base & 3) == 0 && load_acquire32(base + ACCESS_STATE_AT) == STATE_LIVE) {
        /* Bytes the shard reads and writes concurrently: relaxed atomics, as the order does not matter. */
        unsigned char clock = __atomic_load_n(base + ACCESS_CLOCK_AT, __ATOMIC_RELAXED);
        unsigned char *at = base + ACCESS_HEADER_BYTES + (key_hash & mask);
        if (__atomic_load_n(at, __ATOMIC_RELAXED) != clock) { /* no store when unchanged: the line stays shared */
            __atomic_store_n(at, clock, __ATOMIC_RELAXED);
        }
    }
    PyBuffer_Release(&times);
    return 0;
}

static PyObject *lookup_many(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 4 || nargs > 5 || !PyList_Check(args[0]) || !PyCallable_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "lookup_many() takes keys (a list), shard_count, now_ms, state_of[, values]");
        return NULL;
    }
    int values_only = nargs == 5 ? PyObject_IsTrue(args[4]) : 0;
    if (values_only < 0) return NULL;
    uint64_t shard_count = PyLong_AsUnsignedLongLong(args[1]);
    if (shard_count == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    long long now_ms = PyLong_AsLongLong(args[2]);
    if (now_ms == -1 && PyErr_Occurred()) return NULL;
    if (shard_count == 0 || shard_count > (uint64_t)PY_SSIZE_T_MAX / sizeof(PyObject *)) {
        PyErr_SetString(PyExc_ValueError, "lookup_many() needs a shard count of at least 1");
        return NULL;
    }
    /* A tuple of the keys: the CRC check may release the GIL, and the caller's list may change meanwhile. */
    PyObject *keys = PyList_AsTuple(args[0]);
    if (keys == NULL) return NULL;
    PyObject *state_of = args[3];
    Py_ssize_t count = PyTuple_GET_SIZE(keys);
    PyObject **states = PyMem_Calloc((size_t)shard_count, sizeof(PyObject *)); /* NULL: not asked yet */
    uint64_t *masks = PyMem_Calloc((size_t)shard_count, sizeof(uint64_t));
    PyObject *answers = PyList_New(0); /* appended to: never holds an unset item while state_of runs */
    if (states == NULL || masks == NULL || answers == NULL) {
        if (states == NULL || masks == NULL) PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key_object = PyTuple_GET_ITEM(keys, i);
        if (!PyBytes_Check(key_object)) {
            PyErr_SetString(PyExc_TypeError, "lookup_many() needs every key as bytes");
            goto fail;
        }
        const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(key_object);
        Py_ssize_t key_len = PyBytes_GET_SIZE(key_object);
        uint64_t key_hash = key_hash64(key, (size_t)key_len);
        uint64_t shard = route(key, key_len, key_hash, shard_count);
        if (states[shard] == NULL) {
            PyObject *shard_object = PyLong_FromUnsignedLongLong(shard);
            if (shard_object == NULL) goto fail;
            states[shard] = PyObject_CallOneArg(state_of, shard_object);
            Py_DECREF(shard_object);
            if (states[shard] == NULL) goto fail;
            if (states[shard] != Py_None) {
                if (!(PyTuple_Check(states[shard]) && PyTuple_GET_SIZE(states[shard]) == 4 &&
                      PyDict_Check(PyTuple_GET_ITEM(states[shard], 1)))) {
                    PyErr_SetString(PyExc_TypeError, "state_of() must return None or (index_map, views dict, "
                                                     "access, mask)");
                    goto fail;
                }
                masks[shard] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(states[shard], 3));
                if (masks[shard] == (uint64_t)-1 && PyErr_Occurred()) goto fail;
            }
        }
        PyObject *state = states[shard]; /* held in states until the end: the tuple keeps its parts alive */
        PyObject *answer = state == Py_None
            ? Py_NewRef(SLOW)
            : probe(PyTuple_GET_ITEM(state, 0), key, key_len, key_hash, now_ms, PyTuple_GET_ITEM(state, 1));
        if (answer == NULL) goto fail;
        if (PyTuple_CheckExact(answer) && state != Py_None && PyTuple_GET_ITEM(state, 2) != Py_None &&
            mark_used(PyTuple_GET_ITEM(state, 2), masks[shard], key_hash) < 0) {
            Py_DECREF(answer);
            goto fail;
        }
        if (values_only && PyTuple_CheckExact(answer)) {
            Py_SETREF(answer, Py_NewRef(PyTuple_GET_ITEM(answer, 0)));
        } else if (values_only && answer == MISSING) {
            Py_SETREF(answer, Py_NewRef(Py_None));
        }
        int appended = PyList_Append(answers, answer);
        Py_DECREF(answer);
        if (appended < 0) goto fail;
    }
    for (uint64_t shard = 0; shard < shard_count; shard++) Py_XDECREF(states[shard]);
    PyMem_Free(states);
    PyMem_Free(masks);
    Py_DECREF(keys);
    return answers;
fail:
    if (states != NULL) {
        for (uint64_t shard = 0; shard < shard_count; shard++) Py_XDECREF(states[shard]);
        PyMem_Free(states);
    }
    PyMem_Free(masks);
    Py_DECREF(keys);
    Py_XDECREF(answers);
    return NULL;
}

PyDoc_STRVAR(hash_doc, "key_hash64(key: bytes-like) -> int: as ferric_ipc.keys.key_hash64_python, in C.");

static PyObject *py_key_hash64(PyObject *module, PyObject *key) {
    if (PyBytes_CheckExact(key)) {
        return PyLong_FromUnsignedLongLong(
            key_hash64((const unsigned char *)PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key)));
    }
    Py_buffer buffer; /* bytearray, memoryview: as hashlib accepts them */
    if (PyObject_GetBuffer(key, &buffer, PyBUF_SIMPLE) < 0) return NULL;
    uint64_t hash = key_hash64((const unsigned char *)buffer.buf, (size_t)buffer.len);
    PyBuffer_Release(&buffer);
    return PyLong_FromUnsignedLongLong(hash);
}

PyDoc_STRVAR(crc_doc, "crc32(data: bytes) -> int: as zlib.crc32, exposed for tests.");

static PyObject *py_crc32(PyObject *module, PyObject *data) {
    Py_buffer buffer;
    if (PyObject_GetBuffer(data, &buffer, PyBUF_SIMPLE) < 0) return NULL;
    uint32_t crc = record_crc32((const unsigned char *)buffer.buf, (size_t)buffer.len);
    PyBuffer_Release(&buffer);
    return PyLong_FromUnsignedLong(crc);
}

PyDoc_STRVAR(configure_doc, "configure(missing, fallback, slow): the objects lookup() returns besides a hit.");

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *missing, *fallback, *slow;
    if (!PyArg_ParseTuple(args, "OOO:configure", &missing, &fallback, &slow)) return NULL;
    Py_XSETREF(MISSING, Py_NewRef(missing));
    Py_XSETREF(FALLBACK, Py_NewRef(fallback));
    Py_XSETREF(SLOW, Py_NewRef(slow));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"lookup", (PyCFunction)(void (*)(void))lookup, METH_FASTCALL, lookup_doc},
    {"lookup_many", (PyCFunction)(void (*)(void))lookup_many, METH_FASTCALL, lookup_many_doc},
    {"key_hash64", py_key_hash64, METH_O, hash_doc},
    {"crc32", py_crc32, METH_O, crc_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {"map_window", map_window, METH_VARARGS, map_window_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ferric_ipc._localread",
    "Local-read hot path in C: the stable key hash and a verified lookup in a shard's mapped index.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__localread(void) {
    crc_init();
    if (PyType_Ready(&FileWindowType) < 0) return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) return NULL;
    PyObject *zlib = PyImport_ImportModule("zlib");
    if (zlib != NULL) {
        zlib_crc32 = PyObject_GetAttrString(zlib, "crc32");
        Py_DECREF(zlib);
    }
    PyErr_Clear(); /* no zlib: the tables serve every length */
    MISSING = Py_NewRef(Py_None);
    FALLBACK = Py_NewRef(Py_None);
    SLOW = Py_NewRef(Py_None);
    /* Compared with index_layout/file_layout at import: a mismatch disables this module. */
    PyObject *layout = Py_BuildValue(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i}",
        "HEADER_BYTES", HEADER_BYTES, "STATE_AT", STATE_AT, "CAPACITY_AT", CAPACITY_AT,
        "STATE_LIVE", STATE_LIVE, "SLOT_BYTES", SLOT_BYTES,
        "SLOT_SEQ_AT", SLOT_SEQ_AT, "SLOT_FILE_ID_AT", SLOT_FILE_ID_AT, "SLOT_HASH_AT", SLOT_HASH_AT,
        "SLOT_OFFSET_AT", SLOT_OFFSET_AT, "SLOT_RECORD_LEN_AT", SLOT_RECORD_LEN_AT,
        "SLOT_EXPIRE_AT", SLOT_EXPIRE_AT, "EMPTY", HASH_EMPTY, "RESERVED_HASHES", RESERVED_HASHES,
        "RECORD_HEADER_BYTES", RECORD_HEADER_BYTES, "RECORD_CRC_BYTES", RECORD_CRC_BYTES, "RECORD_FLAGS_AT", RECORD_FLAGS_AT,
        "RECORD_KEY_LEN_AT", RECORD_KEY_LEN_AT, "RECORD_VALUE_LEN_AT", RECORD_VALUE_LEN_AT,
        "FLAG_TOMBSTONE", FLAG_TOMBSTONE, "ACCESS_HEADER_BYTES", ACCESS_HEADER_BYTES,
        "ACCESS_STATE_AT", ACCESS_STATE_AT, "ACCESS_CLOCK_AT", ACCESS_CLOCK_AT);
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
