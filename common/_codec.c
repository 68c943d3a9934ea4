/*
 * raftmq._codec: the records section of a Kafka RecordBatch v2, compiled.
 *
 * The same two functions as raftmq/_codec_py.py (the pure-Python fallback), with the same
 * results and errors; raftmq.record_batch picks one and documents the layout. This file
 * does only the per-record work; the batch header, CRC and compression stay in Python.
 *
 * decode_records builds raftmq.message.Message instances with tp_alloc and stores into
 * their __slots__ by offset, without calling __init__. The offsets come from the slots'
 * member descriptors, looked up and checked once when the module is imported: a Message
 * whose slots changed makes the import fail, never the codec write into the wrong field.
 * A consumer passes the topic and partition (stored into every message here, instead of a
 * Python loop over them afterwards) and its fetch position `min_offset`: a fetch answers
 * from the start of the batch holding that offset, and the records before it are checked
 * and skipped without allocating anything for them.
 *
 * Decoded messages and the GC: a decoded Message is untracked by the cycle collector
 * (PyObject_GC_UnTrack, as CPython untracks tuples and dicts of atomic values). Its slots
 * hold bytes, str, int, None and a tuple of (str, bytes-or-None) pairs, none of which can
 * refer back to it, so it can never be part of a cycle; tracked, a 4 MiB fetch of 100-byte
 * records adds ~35,000 objects that every young collection walks and that push the old
 * generation into full collections of the whole heap (a consumer read 0.75-0.87M msgs/s
 * with them tracked, 1.0-1.2M untracked, alternating runs). Freeing one is unchanged
 * (refcounting). What this gives up: a cycle made by assigning a slot, against its type,
 * a container that refers back to the message (`m.headers = [m]`) is never collected.
 * untrack_messages does the same for the messages a Writer takes, after checking that
 * their slots hold only such values: in flight they would otherwise be walked by every
 * collection of the generations they reach (bench produce: 300-350k msgs/s with the
 * collector on, 410-450k with it off).
 *
 * Safety rules followed throughout:
 * - every varint and every length is checked against the end of its record (or batch)
 *   before a byte is read; malformed input raises ValueError, and nothing else, whatever
 *   the bytes (UnicodeDecodeError, raised for a bad header key, is a ValueError);
 * - a record count or header count is checked against the bytes left (each record takes
 *   >= 7 bytes, each header >= 2) before anything is allocated for it;
 * - encode_records reads slots through borrowed references: between reading a slot and
 *   copying its bytes no Python code runs and no GC-tracked object is allocated (only
 *   plain memory), so nothing can rebind or free what it points to.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* The Message slots, in the order used below. */
enum {
    SLOT_VALUE,
    SLOT_KEY,
    SLOT_TOPIC,
    SLOT_PARTITION,
    SLOT_OFFSET,
    SLOT_HEADERS,
    SLOT_TIMESTAMP_MS,
    SLOT_COUNT
};
static const char *const slot_names[SLOT_COUNT] = {
    "value", "key", "topic", "partition", "offset", "headers", "timestamp_ms",
};

/* Set once by the module init and never changed; a strong reference to Message. */
static PyTypeObject *message_type;
static Py_ssize_t slot_offsets[SLOT_COUNT];
/* Shared by every decoded record without headers (records rarely carry any). */
static PyObject *no_headers;

#define SLOT(obj, index) (*(PyObject **)((char *)(obj) + slot_offsets[index]))

/* A record is >= 7 bytes: length, attributes, timestamp delta, offset delta, key length,
 * value length and header count, one byte each. A header is >= 2: key and value length. */
#define RECORD_BYTES_MIN 7
#define HEADER_BYTES_MIN 2
/* Kafka varints: at most 5 bytes for an int32, 10 for an int64. */
#define VARINT_BYTES_MAX 5
#define VARLONG_BYTES_MAX 10
/* The encoder's buffer starts at this many bytes per message (100-byte values fit), at
 * most ENCODE_BUFFER_START_MAX in all, and doubles as needed. */
#define ENCODE_BYTES_PER_MESSAGE_GUESS 128
#define ENCODE_BUFFER_START_MAX (1 << 20)

/* ---- decoding -------------------------------------------------------------------- */

static int
corrupt(const char *what, const uint8_t *at, const uint8_t *base)
{
    PyErr_Format(PyExc_ValueError, "%s at position %zd", what, (Py_ssize_t)(at - base));
    return -1;
}

/* A cursor over [pos, end) of a buffer that starts at base (for error positions). */
typedef struct {
    const uint8_t *pos;
    const uint8_t *end;
    const uint8_t *base;
} reader_t;

/* An unsigned varint of at most groups_max 7-bit groups. Bits of the final group beyond
 * the type's width are dropped, as Java's ByteUtils.readVarint / readVarlong drop them. */
static inline int
read_uvarint(reader_t *r, int groups_max, uint64_t *out)
{
    const uint8_t *p = r->pos;
    uint64_t result = 0;
    for (int group = 0; group < groups_max; group++) {
        if (p >= r->end) {
            return corrupt("truncated varint", p, r->base);
        }
        uint8_t byte = *p++;
        /* group * 7 <= 63: the shift is defined; high bits fall off the uint64. */
        result |= (uint64_t)(byte & 0x7F) << (group * 7);
        if (byte < 0x80) {
            r->pos = p;
            *out = result;
            return 0;
        }
    }
    return corrupt("varint too long", r->pos, r->base);
}

static inline int
read_varint(reader_t *r, int32_t *out)
{
    /* Most varints here are one byte (small lengths and deltas). */
    if (r->pos < r->end && *r->pos < 0x80) {
        uint32_t u = *r->pos++;
        *out = (int32_t)((u >> 1) ^ (0u - (u & 1)));
        return 0;
    }
    uint64_t wide;
    if (read_uvarint(r, VARINT_BYTES_MAX, &wide) < 0) {
        return -1;
    }
    uint32_t u = (uint32_t)wide; /* an int32's 32 bits */
    *out = (int32_t)((u >> 1) ^ (0u - (u & 1)));
    return 0;
}

static inline int
read_varlong(reader_t *r, int64_t *out)
{
    uint64_t u;
    if (read_uvarint(r, VARLONG_BYTES_MAX, &u) < 0) {
        return -1;
    }
    *out = (int64_t)((u >> 1) ^ (0u - (u & 1)));
    return 0;
}

/* A length varint (-1 = null) and the bytes it announces, checked against the record's end
 * and skipped: *data points at them (NULL for null), *length is -1 for null. Returns -1 with
 * an exception set. */
static int
read_sized(reader_t *r, const char *what, const uint8_t **data, int32_t *length)
{
    if (read_varint(r, length) < 0) {
        return -1;
    }
    if (*length < 0) {
        if (*length == -1) {
            *data = NULL;
            return 0;
        }
        PyErr_Format(PyExc_ValueError, "%s length %d is below -1 at position %zd", what,
                     (int)*length, (Py_ssize_t)(r->pos - r->base));
        return -1;
    }
    if (*length > r->end - r->pos) {
        PyErr_Format(PyExc_ValueError, "%s of %d bytes overruns its record at position %zd",
                     what, (int)*length, (Py_ssize_t)(r->pos - r->base));
        return -1;
    }
    *data = r->pos;
    r->pos += *length;
    return 0;
}

/* read_sized, as bytes or None (new reference). Returns NULL with an exception set. */
static PyObject *
read_sized_bytes(reader_t *r, const char *what)
{
    const uint8_t *data;
    int32_t length;
    if (read_sized(r, what, &data, &length) < 0) {
        return NULL;
    }
    if (data == NULL) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)data, length);
}

/* A record's header count, checked against the bytes left. Returns -1 with an exception. */
static int
read_header_count(reader_t *r, Py_ssize_t index, int32_t *count)
{
    if (read_varint(r, count) < 0) {
        return -1;
    }
    if (*count < 0 || *count > (r->end - r->pos) / HEADER_BYTES_MIN) {
        PyErr_Format(PyExc_ValueError, "record %zd claims %d headers", index, (int)*count);
        return -1;
    }
    return 0;
}

/* One header key: a length (never null) and its bytes, not yet decoded. */
static int
read_header_key(reader_t *r, Py_ssize_t index, const uint8_t **data, int32_t *length)
{
    if (read_varint(r, length) < 0) {
        return -1;
    }
    if (*length < 0) {
        PyErr_Format(PyExc_ValueError, "record %zd has a header key of length %d", index,
                     (int)*length);
        return -1;
    }
    if (*length > r->end - r->pos) {
        return corrupt("header key overruns its record", r->pos, r->base);
    }
    *data = r->pos;
    r->pos += *length;
    return 0;
}

/* The headers of one record: the shared empty tuple, or a tuple of (str, bytes | None). */
static PyObject *
read_headers(reader_t *r, Py_ssize_t index)
{
    int32_t count;
    if (read_header_count(r, index, &count) < 0) {
        return NULL;
    }
    if (count == 0) {
        Py_INCREF(no_headers);
        return no_headers;
    }
    PyObject *headers = PyTuple_New(count);
    if (headers == NULL) {
        return NULL;
    }
    for (int32_t i = 0; i < count; i++) {
        const uint8_t *key;
        int32_t key_length;
        if (read_header_key(r, index, &key, &key_length) < 0) {
            goto error;
        }
        PyObject *name = PyUnicode_DecodeUTF8((const char *)key, key_length, "strict");
        if (name == NULL) {
            goto error;
        }
        PyObject *value = read_sized_bytes(r, "header value");
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyTuple_SET_ITEM(headers, i, pair);
    }
    return headers;
error:
    Py_DECREF(headers); /* tuple_dealloc skips the items not set yet (NULL) */
    return NULL;
}

/* The key, value and headers of a record below min_offset: checked as read_record checks
 * them (header keys are not decoded as UTF-8), and nothing allocated. */
static int
skip_record_fields(reader_t *r, Py_ssize_t index)
{
    const uint8_t *data;
    int32_t length, count;
    if (read_sized(r, "key", &data, &length) < 0 || read_sized(r, "value", &data, &length) < 0 ||
        read_header_count(r, index, &count) < 0) {
        return -1;
    }
    /* Bound: count headers, checked against the bytes left. */
    for (int32_t i = 0; i < count; i++) {
        if (read_header_key(r, index, &data, &length) < 0 ||
            read_sized(r, "header value", &data, &length) < 0) {
            return -1;
        }
    }
    return 0;
}

/* What decode_records gives every record, and which records it skips. */
typedef struct {
    int64_t base_offset;
    int64_t base_timestamp_ms;
    int has_log_append_time;
    int64_t log_append_time_ms;
    /* Records below this offset are skipped; negative: none is. */
    int64_t min_offset;
    /* Borrowed from the caller's arguments, stored (with a new reference) in every message:
     * a str or None, an int or None. */
    PyObject *topic;
    PyObject *partition;
} decode_params_t;

/* The key, value and headers at rec->pos into a new Message (reference returned). */
static PyObject *
new_message(reader_t *rec, Py_ssize_t index, const decode_params_t *params, int64_t offset,
            int64_t timestamp_ms)
{
    PyObject *key = NULL, *value = NULL, *headers = NULL;
    PyObject *offset_obj = NULL, *timestamp_obj = NULL;
    key = read_sized_bytes(rec, "key");
    if (key == NULL) {
        goto error;
    }
    value = read_sized_bytes(rec, "value");
    if (value == NULL) {
        goto error;
    }
    headers = read_headers(rec, index);
    if (headers == NULL) {
        goto error;
    }
    offset_obj = PyLong_FromLongLong(offset);
    if (offset_obj == NULL) {
        goto error;
    }
    timestamp_obj = PyLong_FromLongLong(timestamp_ms);
    if (timestamp_obj == NULL) {
        goto error;
    }
    /* Zeroed, GC-tracked; NULL slots are fine for the GC until they are filled. */
    PyObject *message = message_type->tp_alloc(message_type, 0);
    if (message == NULL) {
        goto error;
    }
    /* The slots take over the references. */
    SLOT(message, SLOT_VALUE) = value;
    SLOT(message, SLOT_KEY) = key;
    Py_INCREF(params->topic);
    SLOT(message, SLOT_TOPIC) = params->topic;
    Py_INCREF(params->partition);
    SLOT(message, SLOT_PARTITION) = params->partition;
    SLOT(message, SLOT_OFFSET) = offset_obj;
    SLOT(message, SLOT_HEADERS) = headers;
    SLOT(message, SLOT_TIMESTAMP_MS) = timestamp_obj;
    /* Out of the cycle collector's lists: see "Decoded messages and the GC" above. */
    PyObject_GC_UnTrack(message);
    return message;
error:
    Py_XDECREF(key);
    Py_XDECREF(value);
    Py_XDECREF(headers);
    Py_XDECREF(offset_obj);
    Py_XDECREF(timestamp_obj);
    return NULL;
}

/* One record at r->pos, advancing r->pos past it: *out is a new Message, or NULL for a
 * record below params->min_offset. Returns -1 with an exception set. */
static int
read_record(reader_t *r, Py_ssize_t index, const decode_params_t *params, PyObject **out)
{
    *out = NULL;
    int32_t length;
    if (read_varint(r, &length) < 0) {
        return -1;
    }
    if (length < 0 || length > r->end - r->pos) {
        PyErr_Format(PyExc_ValueError, "record %zd of %d bytes overruns the batch", index,
                     (int)length);
        return -1;
    }
    if (length == 0) {
        PyErr_Format(PyExc_ValueError, "record %zd is empty", index);
        return -1;
    }
    /* Every field is read within the record's own bytes. */
    reader_t rec = {r->pos, r->pos + length, r->base};
    rec.pos++; /* attributes: unused in v2 records */
    int64_t timestamp_delta_ms;
    int32_t offset_delta;
    if (read_varlong(&rec, &timestamp_delta_ms) < 0 || read_varint(&rec, &offset_delta) < 0) {
        return -1;
    }
    int64_t offset, timestamp_ms;
    if (__builtin_add_overflow(params->base_offset, (int64_t)offset_delta, &offset)) {
        PyErr_Format(PyExc_ValueError, "record %zd's offset overflows int64", index);
        return -1;
    }
    if (params->has_log_append_time) {
        timestamp_ms = params->log_append_time_ms;
    }
    else if (__builtin_add_overflow(params->base_timestamp_ms, timestamp_delta_ms,
                                    &timestamp_ms)) {
        PyErr_Format(PyExc_ValueError, "record %zd's timestamp overflows int64", index);
        return -1;
    }
    PyObject *message = NULL;
    if (params->min_offset >= 0 && offset < params->min_offset) {
        if (skip_record_fields(&rec, index) < 0) {
            return -1;
        }
    }
    else {
        message = new_message(&rec, index, params, offset, timestamp_ms);
        if (message == NULL) {
            return -1;
        }
    }
    if (rec.pos != rec.end) {
        PyErr_Format(PyExc_ValueError, "record %zd says %d bytes, its fields take %zd", index,
                     (int)length, (Py_ssize_t)(rec.pos - r->pos));
        Py_XDECREF(message);
        return -1;
    }
    r->pos = rec.end;
    *out = message;
    return 0;
}

static int
missing(const char *name)
{
    PyErr_Format(PyExc_TypeError, "decode_records() missing required keyword argument '%s'",
                 name);
    return -1;
}

/* An int64 from a required keyword argument (NULL: not given). */
static int
required_int64(PyObject *obj, const char *name, int64_t *out)
{
    if (obj == NULL) {
        return missing(name);
    }
    long long value = PyLong_AsLongLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    *out = value;
    return 0;
}

/* The keyword arguments into params (topic and partition borrowed). */
static int
parse_params(PyObject *base_offset, PyObject *base_timestamp_ms, PyObject *log_append_time_ms,
             PyObject *topic, PyObject *partition, long long min_offset,
             decode_params_t *params)
{
    if (required_int64(base_offset, "base_offset", &params->base_offset) < 0 ||
        required_int64(base_timestamp_ms, "base_timestamp_ms", &params->base_timestamp_ms) <
            0) {
        return -1;
    }
    if (log_append_time_ms == NULL) {
        return missing("log_append_time_ms");
    }
    params->has_log_append_time = log_append_time_ms != Py_None;
    params->log_append_time_ms = 0;
    if (params->has_log_append_time &&
        required_int64(log_append_time_ms, "log_append_time_ms",
                       &params->log_append_time_ms) < 0) {
        return -1;
    }
    if (topic != Py_None && !PyUnicode_Check(topic)) {
        PyErr_Format(PyExc_TypeError, "topic must be str or None, not %.100s",
                     Py_TYPE(topic)->tp_name);
        return -1;
    }
    if (partition != Py_None && !PyLong_Check(partition)) {
        PyErr_Format(PyExc_TypeError, "partition must be int or None, not %.100s",
                     Py_TYPE(partition)->tp_name);
        return -1;
    }
    params->topic = topic;
    params->partition = partition;
    params->min_offset = min_offset;
    return 0;
}

PyDoc_STRVAR(decode_records_doc,
"decode_records(data, start, record_count, /, *, base_offset, base_timestamp_ms,\n"
"               log_append_time_ms, topic=None, partition=None, min_offset=-1)\n"
"    -> list[Message]\n\n"
"The record_count records in data[start:], which they must fill exactly, with topic and\n"
"partition set; records below min_offset (when >= 0) are checked but not built. Raises\n"
"ValueError for any malformed input.");

static PyObject *
decode_records(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    /* Empty names: positional-only; "|$": optional and keyword-only from there on (the
     * first three are required: checked by parse_params). */
    static char *keywords[] = {"", "", "", "base_offset", "base_timestamp_ms",
                               "log_append_time_ms", "topic", "partition", "min_offset",
                               NULL};
    Py_buffer data;
    Py_ssize_t start, record_count;
    PyObject *base_offset = NULL, *base_timestamp_ms = NULL, *log_append_time_ms = NULL;
    PyObject *topic = Py_None, *partition = Py_None;
    long long min_offset = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*nn|$OOOOOL:decode_records", keywords,
                                     &data, &start, &record_count, &base_offset,
                                     &base_timestamp_ms, &log_append_time_ms, &topic,
                                     &partition, &min_offset)) {
        return NULL;
    }
    PyObject *messages = NULL;
    decode_params_t params;
    if (parse_params(base_offset, base_timestamp_ms, log_append_time_ms, topic, partition,
                     min_offset, &params) < 0) {
        goto done;
    }
    if (start < 0 || start > data.len) {
        PyErr_Format(PyExc_ValueError, "records start at %zd, outside the %zd-byte batch",
                     start, data.len);
        goto done;
    }
    /* Checked before the list is allocated: a forged count cannot allocate more than the
     * data could hold. */
    if (record_count < 0 || record_count > (data.len - start) / RECORD_BYTES_MIN) {
        PyErr_Format(PyExc_ValueError,
                     "%zd records cannot fit in %zd bytes (each takes at least %d)",
                     record_count, data.len - start, RECORD_BYTES_MIN);
        goto done;
    }
    messages = PyList_New(record_count);
    if (messages == NULL) {
        goto done;
    }
    const uint8_t *base = (const uint8_t *)data.buf;
    reader_t r = {base + start, base + data.len, base};
    Py_ssize_t kept = 0;
    /* Bound: record_count records, each consuming >= RECORD_BYTES_MIN bytes. */
    for (Py_ssize_t i = 0; i < record_count; i++) {
        PyObject *message;
        if (read_record(&r, i, &params, &message) < 0) {
            Py_CLEAR(messages); /* list_dealloc skips the items not set yet (NULL) */
            goto done;
        }
        if (message != NULL) {
            PyList_SET_ITEM(messages, kept, message);
            kept++;
        }
    }
    if (r.pos != r.end) {
        PyErr_Format(PyExc_ValueError, "%zd bytes follow the last of %zd records",
                     (Py_ssize_t)(r.end - r.pos), record_count);
        Py_CLEAR(messages);
        goto done;
    }
    if (kept < record_count) {
        /* Some were skipped: the filled prefix as a list of its own (the rest is NULL). */
        PyObject *prefix = PyList_GetSlice(messages, 0, kept);
        Py_DECREF(messages);
        messages = prefix;
    }
done:
    PyBuffer_Release(&data);
    return messages;
}

/* ---- encoding -------------------------------------------------------------------- */

static inline Py_ssize_t
uvarint_size(uint64_t u)
{
    Py_ssize_t size = 1;
    while (u >= 0x80) {
        u >>= 7;
        size++;
    }
    return size;
}

static inline uint32_t
zigzag32(int32_t value)
{
    uint32_t u = (uint32_t)value;
    return (u << 1) ^ (0u - (u >> 31));
}

static inline uint64_t
zigzag64(int64_t value)
{
    uint64_t u = (uint64_t)value;
    return (u << 1) ^ (0u - (u >> 63));
}

static inline uint8_t *
write_uvarint(uint8_t *p, uint64_t u)
{
    while (u >= 0x80) {
        *p++ = (uint8_t)(u | 0x80);
        u >>= 7;
    }
    *p++ = (uint8_t)u;
    return p;
}

/* A key, value or header value: bytes, str (as UTF-8) or None (*length = -1). The pointer
 * is borrowed from obj (see the file comment). Returns -1 with an exception set. */
static int
field_bytes(PyObject *obj, const char *what, const char **data, Py_ssize_t *length)
{
    if (obj == Py_None) {
        *data = NULL;
        *length = -1;
        return 0;
    }
    if (PyBytes_Check(obj)) {
        *data = PyBytes_AS_STRING(obj);
        *length = PyBytes_GET_SIZE(obj);
    }
    else if (PyUnicode_Check(obj)) {
        /* Cached in the str object: a plain allocation at most, no Python code. */
        *data = PyUnicode_AsUTF8AndSize(obj, length);
        if (*data == NULL) {
            return -1;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, str or None, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (*length > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "%s of %zd bytes exceeds Kafka's int32 length", what,
                     *length);
        return -1;
    }
    return 0;
}

static inline Py_ssize_t
sized_size(Py_ssize_t length)
{
    return length < 0 ? 1 : uvarint_size(zigzag32((int32_t)length)) + length;
}

static inline uint8_t *
write_sized(uint8_t *p, const char *data, Py_ssize_t length)
{
    if (length < 0) {
        *p++ = 1; /* zigzag(-1) */
        return p;
    }
    p = write_uvarint(p, zigzag32((int32_t)length));
    memcpy(p, data, (size_t)length);
    return p + length;
}

/* The headers slot as a tuple or list and its item count; header items are checked by
 * headers_size. Returns -1 with an exception set. */
static int
header_items(PyObject *headers, PyObject *const **items, Py_ssize_t *count)
{
    if (headers == NULL || !(PyTuple_Check(headers) || PyList_Check(headers))) {
        PyErr_Format(PyExc_TypeError, "headers must be a tuple or list, not %.100s",
                     headers == NULL ? "unset" : Py_TYPE(headers)->tp_name);
        return -1;
    }
    *items = PySequence_Fast_ITEMS(headers);
    *count = PySequence_Fast_GET_SIZE(headers);
    if (*count > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "more headers than Kafka's int32 count");
        return -1;
    }
    return 0;
}

/* Bytes the headers take after their count; checks each item's shape and types. */
static Py_ssize_t
headers_size(PyObject *const *items, Py_ssize_t count)
{
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "a header must be a (str, bytes or None) tuple");
            return -1;
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0);
        if (!PyUnicode_Check(name)) {
            PyErr_Format(PyExc_TypeError, "a header key must be str, not %.100s",
                         Py_TYPE(name)->tp_name);
            return -1;
        }
        const char *data;
        Py_ssize_t name_length, value_length;
        if (field_bytes(name, "header key", &data, &name_length) < 0 ||
            field_bytes(PyTuple_GET_ITEM(pair, 1), "header value", &data, &value_length) < 0) {
            return -1;
        }
        size += sized_size(name_length) + sized_size(value_length);
    }
    return size;
}

/* Writes the headers that headers_size checked (the UTF-8 of each key is cached by now). */
static uint8_t *
write_headers(uint8_t *p, PyObject *const *items, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pair = items[i];
        const char *data = NULL;
        Py_ssize_t length = -1;
        (void)field_bytes(PyTuple_GET_ITEM(pair, 0), "header key", &data, &length);
        p = write_sized(p, data, length);
        (void)field_bytes(PyTuple_GET_ITEM(pair, 1), "header value", &data, &length);
        p = write_sized(p, data, length);
    }
    return p;
}

/* A message's timestamp_ms, -1 replaced by now_ms; must end up in [0, INT64_MAX]. */
static int
message_timestamp_ms(PyObject *message, int64_t now_ms, int64_t *out)
{
    PyObject *obj = SLOT(message, SLOT_TIMESTAMP_MS);
    if (obj == NULL || !PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "timestamp_ms must be int, not %.100s",
                     obj == NULL ? "unset" : Py_TYPE(obj)->tp_name);
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (!overflow && value == -1) {
        value = now_ms;
    }
    if (overflow || value < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "a timestamp is outside 0 .. 2**63 - 1 ms (or -1 for now)");
        return -1;
    }
    *out = value;
    return 0;
}

PyDoc_STRVAR(encode_records_doc,
"encode_records(messages, now_ms, /) -> tuple[bytes, int, int]\n\n"
"The records section for messages (at least one) and its base and max timestamps.\n"
"Raises TypeError / ValueError for a message that cannot be encoded.");

static PyObject *
encode_records(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *messages_arg;
    long long now_ms;
    if (!PyArg_ParseTuple(args, "OL:encode_records", &messages_arg, &now_ms)) {
        return NULL;
    }
    /* A tuple of our own: its items stay alive and in place while we hold it. */
    PyObject *messages = PySequence_Tuple(messages_arg);
    if (messages == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(messages);
    uint8_t *buffer = NULL;
    PyObject *result = NULL;
    if (count < 1 || count > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "a batch holds 1 .. 2**31 - 1 records");
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(messages, i), message_type)) {
            PyErr_Format(PyExc_TypeError, "expected a Message, got %.100s",
                         Py_TYPE(PyTuple_GET_ITEM(messages, i))->tp_name);
            goto done;
        }
    }
    int64_t base_timestamp_ms, max_timestamp_ms;
    if (message_timestamp_ms(PyTuple_GET_ITEM(messages, 0), now_ms, &base_timestamp_ms) < 0) {
        goto done;
    }
    max_timestamp_ms = base_timestamp_ms;

    Py_ssize_t capacity = count < ENCODE_BUFFER_START_MAX / ENCODE_BYTES_PER_MESSAGE_GUESS
                              ? count * ENCODE_BYTES_PER_MESSAGE_GUESS
                              : ENCODE_BUFFER_START_MAX;
    Py_ssize_t used = 0;
    buffer = PyMem_Malloc((size_t)capacity);
    if (buffer == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    /* Bound: count records. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *message = PyTuple_GET_ITEM(messages, i);
        int64_t timestamp_ms;
        if (message_timestamp_ms(message, now_ms, &timestamp_ms) < 0) {
            goto done;
        }
        if (timestamp_ms > max_timestamp_ms) {
            max_timestamp_ms = timestamp_ms;
        }
        /* Both in [0, INT64_MAX]: the difference fits an int64. */
        uint64_t timestamp_delta = zigzag64(timestamp_ms - base_timestamp_ms);
        uint32_t offset_delta = zigzag32((int32_t)i);
        const char *key, *value;
        Py_ssize_t key_length, value_length, header_count;
        PyObject *const *header_list;
        PyObject *key_obj = SLOT(message, SLOT_KEY), *value_obj = SLOT(message, SLOT_VALUE);
        if (key_obj == NULL || value_obj == NULL) {
            PyErr_SetString(PyExc_TypeError, "a Message without key or value (unset slot)");
            goto done;
        }
        if (field_bytes(key_obj, "key", &key, &key_length) < 0 ||
            field_bytes(value_obj, "value", &value, &value_length) < 0 ||
            header_items(SLOT(message, SLOT_HEADERS), &header_list, &header_count) < 0) {
            goto done;
        }
        Py_ssize_t headers_bytes = headers_size(header_list, header_count);
        if (headers_bytes < 0) {
            goto done;
        }
        /* Each term is <= INT32_MAX + 10 or a varint, so the sum cannot overflow. */
        Py_ssize_t body = 1 + uvarint_size(timestamp_delta) + uvarint_size(offset_delta) +
                          sized_size(key_length) + sized_size(value_length) +
                          uvarint_size(zigzag32((int32_t)header_count)) + headers_bytes;
        if (body > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "record of %zd bytes exceeds Kafka's int32 length",
                         body);
            goto done;
        }
        uint32_t body_length = zigzag32((int32_t)body);
        Py_ssize_t needed = uvarint_size(body_length) + body;
        if (needed > capacity - used) {
            Py_ssize_t grown = capacity;
            while (needed > grown - used) {
                if (grown > PY_SSIZE_T_MAX / 2) {
                    PyErr_NoMemory();
                    goto done;
                }
                grown *= 2;
            }
            uint8_t *moved = PyMem_Realloc(buffer, (size_t)grown);
            if (moved == NULL) {
                PyErr_NoMemory();
                goto done;
            }
            buffer = moved;
            capacity = grown;
        }
        uint8_t *p = buffer + used;
        p = write_uvarint(p, body_length);
        *p++ = 0; /* attributes: unused in v2 records */
        p = write_uvarint(p, timestamp_delta);
        p = write_uvarint(p, offset_delta);
        p = write_sized(p, key, key_length);
        p = write_sized(p, value, value_length);
        p = write_uvarint(p, zigzag32((int32_t)header_count));
        p = write_headers(p, header_list, header_count);
        assert(p - (buffer + used) == needed);
        used += needed;
    }
    PyObject *records = PyBytes_FromStringAndSize((const char *)buffer, used);
    if (records == NULL) {
        goto done;
    }
    result = Py_BuildValue("(NLL)", records, (long long)base_timestamp_ms,
                           (long long)max_timestamp_ms);
done:
    PyMem_Free(buffer);
    Py_DECREF(messages);
    return result;
}

/* ---- module ---------------------------------------------------------------------- */

/* Finds each slot's offset in Message; fails unless every one is a writable object slot
 * defined by Message itself and inside its instances. */
static int
load_message_type(void)
{
    PyObject *module = PyImport_ImportModule("raftmq.message");
    if (module == NULL) {
        return -1;
    }
    PyObject *type = PyObject_GetAttrString(module, "Message");
    Py_DECREF(module);
    if (type == NULL) {
        return -1;
    }
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_ImportError, "raftmq.message.Message is not a class");
        Py_DECREF(type);
        return -1;
    }
    PyTypeObject *cls = (PyTypeObject *)type;
    for (int i = 0; i < SLOT_COUNT; i++) {
        PyObject *descr = PyObject_GetAttrString(type, slot_names[i]);
        if (descr == NULL) {
            Py_DECREF(type);
            return -1;
        }
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 PyDescr_TYPE(descr) == cls;
        if (ok) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            ok = member->type == T_OBJECT_EX && !(member->flags & READONLY) &&
                 member->offset >= (Py_ssize_t)sizeof(PyObject) &&
                 member->offset + (Py_ssize_t)sizeof(PyObject *) <= cls->tp_basicsize;
            slot_offsets[i] = member->offset;
        }
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_ImportError,
                         "raftmq.message.Message.%s is not a writable __slots__ member",
                         slot_names[i]);
            Py_DECREF(type);
            return -1;
        }
    }
    message_type = cls; /* keeps the reference */
    return 0;
}

/* ---- payload size ---------------------------------------------------------------- */

/* len(slot) for a key or value slot: bytes (the decoder's), None, or whatever the
 * application assigned since (anything with a length). -1 with an exception set. */
static Py_ssize_t
slot_length(PyObject *obj)
{
    if (obj == NULL || obj == Py_None) {
        return 0;
    }
    if (PyBytes_CheckExact(obj)) {
        return PyBytes_GET_SIZE(obj);
    }
    /* A __len__ may run Python code that rebinds the slot: hold what is measured. */
    Py_INCREF(obj);
    Py_ssize_t length = PyObject_Length(obj);
    Py_DECREF(obj);
    return length;
}

PyDoc_STRVAR(payload_bytes_doc,
"payload_bytes(messages, /) -> int\n\n"
"The bytes of the keys and values of a list of messages (None counts 0): a consumer's\n"
"fetched-bytes figure, without a Python loop over every message.");

static PyObject *
payload_bytes(PyObject *module, PyObject *messages)
{
    (void)module;
    if (!PyList_Check(messages)) {
        PyErr_Format(PyExc_TypeError, "payload_bytes() takes a list, not %.100s",
                     Py_TYPE(messages)->tp_name);
        return NULL;
    }
    long long total = 0;
    /* No Python code runs in the loop (slot_length of bytes or None calls nothing), so
     * the list cannot change under it; PyObject_Length of another type may, hence the
     * size is read again on every pass and each item is held while it is measured. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *message = PyList_GET_ITEM(messages, i);
        if (!PyObject_TypeCheck(message, message_type)) {
            PyErr_Format(PyExc_TypeError, "payload_bytes() item %zd is %.100s, not Message",
                         i, Py_TYPE(message)->tp_name);
            return NULL;
        }
        Py_INCREF(message);
        Py_ssize_t key = slot_length(SLOT(message, SLOT_KEY));
        Py_ssize_t value = key < 0 ? -1 : slot_length(SLOT(message, SLOT_VALUE));
        Py_DECREF(message);
        if (value < 0) {
            return NULL;
        }
        total += key + value;
    }
    return PyLong_FromLongLong(total);
}

/* An atomic value for untrack_messages: nothing it holds can refer to a Message. */
static int
is_atomic_or_none(PyObject *obj)
{
    return obj == Py_None || PyBytes_CheckExact(obj) || PyUnicode_CheckExact(obj) ||
           PyLong_CheckExact(obj);
}

/* A headers slot that can refer to nothing: a tuple of (str, bytes-or-None) tuples. */
static int
headers_are_atomic(PyObject *headers)
{
    if (!PyTuple_CheckExact(headers)) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(headers); i++) {
        PyObject *pair = PyTuple_GET_ITEM(headers, i);
        if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_CheckExact(PyTuple_GET_ITEM(pair, 0)) ||
            !(PyTuple_GET_ITEM(pair, 1) == Py_None || PyBytes_CheckExact(PyTuple_GET_ITEM(pair, 1)))) {
            return 0;
        }
    }
    return 1;
}

PyDoc_STRVAR(untrack_messages_doc,
"untrack_messages(messages, /) -> int\n\n"
"Take out of the cycle collector's lists every Message (exactly that type) whose slots\n"
"hold only bytes, str, int, None and headers of (str, bytes-or-None) pairs: no cycle can\n"
"go through such a message, as through a decoded one. Returns how many were untracked.");

static PyObject *
untrack_messages(PyObject *module, PyObject *messages)
{
    (void)module;
    PyObject *seq = PySequence_Fast(messages, "untrack_messages() takes a sequence");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t untracked = 0;
    /* No Python code runs in the loop: only type checks and reads of slots. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *message = PySequence_Fast_GET_ITEM(seq, i);
        if (Py_TYPE(message) != message_type || !PyObject_GC_IsTracked(message)) {
            continue;
        }
        int atomic = 1;
        for (int slot = 0; slot < SLOT_COUNT && atomic; slot++) {
            PyObject *value = SLOT(message, slot);
            if (value == NULL) {
                atomic = 0; /* unset: left alone */
            } else if (slot == SLOT_HEADERS) {
                atomic = headers_are_atomic(value);
            } else {
                atomic = is_atomic_or_none(value);
            }
        }
        if (atomic) {
            PyObject_GC_UnTrack(message);
            untracked++;
        }
    }
    Py_DECREF(seq);
    return PyLong_FromSsize_t(untracked);
}

static PyMethodDef codec_methods[] = {
    {"encode_records", encode_records, METH_VARARGS, encode_records_doc},
    {"decode_records", (PyCFunction)(void (*)(void))decode_records,
     METH_VARARGS | METH_KEYWORDS, decode_records_doc},
    {"payload_bytes", payload_bytes, METH_O, payload_bytes_doc},
    {"untrack_messages", untrack_messages, METH_O, untrack_messages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef codec_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "raftmq._codec",
    .m_doc = "The records section of a Kafka RecordBatch v2, compiled (see _codec_py).",
    .m_size = -1,
    .m_methods = codec_methods,
};

PyMODINIT_FUNC
PyInit__codec(void)
{
    if (message_type == NULL && load_message_type() < 0) {
        return NULL;
    }
    if (no_headers == NULL) {
        no_headers = PyTuple_New(0);
        if (no_headers == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&codec_module);
}
