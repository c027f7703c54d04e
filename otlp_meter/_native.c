/* otlp_meter._native: the rules engine's hot path in C, with the Python engine as fallback.
 *
 * A Program is one compiled rule (see native.py for the spec it is built from). Called with a
 * record's view, it evaluates the rule's conditions and builds the event's JSON straight from the
 * record's serialized bytes (record attributes, map-body keys, point values and times are read
 * from them) and from the view's resource/scope attribute dicts. It returns:
 *
 *   False         the conditions do not hold: the rule does not take the record;
 *   EncodedEvent  the event, byte for byte what the Python build makes;
 *   None          "not here": anything off the common path (a missing required value, a value
 *                 that needs a conversion it cannot make, NaN, malformed bytes...). The engine
 *                 then runs the rule's Python match and build, which decide, reject and explain.
 *
 * So C never rejects and never decides anything the Python engine would decide differently: it
 * either makes the same event or defers. Hasher is BLAKE2b with personalization (hashlib's
 * blake2b, copyable), which the ids use so that C can finish an id without calling back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_blake2b.h"

/* Bump with every change to what this module offers or how it behaves (native.py checks it). */
#define NATIVE_ABI 4

/* ---------------------------------------------------------------- module globals (setup()) */

typedef struct {
    PyObject *cls; /* the point message class */
    int attrs, start, time, as_double, as_int, sum, count, sum_optional;
} Layout;

static Layout g_points[4];
static int g_npoints = 0;
static PyObject *g_value_of = NULL;    /* attributes.value_of(bytes) -> value */
static PyObject *g_dumps = NULL;       /* orjson.dumps */
static PyObject *g_time_millis = NULL; /* values.time_millis(text) -> int */
static PyTypeObject *g_encoded = NULL; /* events.EncodedEvent */

static PyObject *s_metric_key, *s_raw, *s_raw_slot, *s_hasher_slot, *s_source_slot, *s_res, *s_scope, *s_attrs, *s_values, *s_hasher, *s_default_source, *s_metric,
    *s_metric_type, *s_name, *s_unit, *s_point, *s_received_ns;

#define LOG_TIME 1
#define LOG_OBSERVED 11
#define LOG_BODY 5
#define LOG_ATTRS 6

/* Forget a failed Python call's exception (an Exception: the record is left to the Python engine,
 * which meets it again and judges). KeyboardInterrupt, SystemExit and the like stay set, and the
 * program call raises them. 1: one is still set. */
static int soft_clear(void) {
    if (PyErr_Occurred() == NULL) return 0;
    if (!PyErr_ExceptionMatches(PyExc_Exception)) return 1;
    PyErr_Clear();
    return 0;
}

/* ---------------------------------------------------------------- Hasher */

typedef struct {
    PyObject_HEAD blake2b_state st;
} HasherObject;

static PyTypeObject HasherType;

static int hasher_feed(HasherObject *self, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return -1;
    blake2b_update(&self->st, (const uint8_t *)view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return 0;
}

static PyObject *Hasher_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"data", "digest_size", "person", NULL};
    PyObject *data = NULL;
    int digest_size = 64;
    Py_buffer person = {0};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O$iy*", kwlist, &data, &digest_size, &person)) return NULL;
    if (digest_size < 1 || digest_size > 64 || (person.buf != NULL && person.len > 16)) {
        PyBuffer_Release(&person);
        PyErr_SetString(PyExc_ValueError, "digest_size must be 1..64 and person at most 16 bytes");
        return NULL;
    }
    uint8_t p16[16] = {0};
    if (person.buf != NULL) {
        memcpy(p16, person.buf, (size_t)person.len);
        PyBuffer_Release(&person);
    }
    HasherObject *self = (HasherObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    blake2b_init(&self->st, (size_t)digest_size, p16);
    if (data != NULL && hasher_feed(self, data) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static PyObject *Hasher_copy(HasherObject *self, PyObject *unused) {
    HasherObject *copy = PyObject_New(HasherObject, &HasherType);
    if (copy == NULL) return NULL;
    copy->st = self->st;
    return (PyObject *)copy;
}

static PyObject *Hasher_update(HasherObject *self, PyObject *data) {
    if (hasher_feed(self, data) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Hasher_digest(HasherObject *self, PyObject *unused) {
    uint8_t out[64];
    blake2b_final(&self->st, out);
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)self->st.outlen);
}

static PyObject *Hasher_hexdigest(HasherObject *self, PyObject *unused) {
    static const char hex[] = "0123456789abcdef";
    uint8_t out[64];
    char text[128];
    blake2b_final(&self->st, out);
    for (size_t i = 0; i < self->st.outlen; i++) {
        text[2 * i] = hex[out[i] >> 4];
        text[2 * i + 1] = hex[out[i] & 15];
    }
    return PyUnicode_FromStringAndSize(text, (Py_ssize_t)(2 * self->st.outlen));
}

static PyObject *Hasher_get_digest_size(HasherObject *self, void *closure) {
    return PyLong_FromSize_t(self->st.outlen);
}

static PyMethodDef Hasher_methods[] = {
    {"copy", (PyCFunction)Hasher_copy, METH_NOARGS, "A copy of the hasher (a fork of the hash)."},
    {"update", (PyCFunction)Hasher_update, METH_O, "Feed bytes."},
    {"digest", (PyCFunction)Hasher_digest, METH_NOARGS, "The digest of what was fed."},
    {"hexdigest", (PyCFunction)Hasher_hexdigest, METH_NOARGS, "The digest as hex text."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Hasher_getset[] = {
    {"digest_size", (getter)Hasher_get_digest_size, NULL, "Digest length in bytes.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject HasherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "otlp_meter._native.Hasher",
    .tp_basicsize = sizeof(HasherObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BLAKE2b as hashlib.blake2b(data, digest_size=, person=) computes it.",
    .tp_new = Hasher_new,
    .tp_methods = Hasher_methods,
    .tp_getset = Hasher_getset,
};

/* ---------------------------------------------------------------- protobuf wire reading */

typedef struct {
    const uint8_t *p, *end;
} Reader;

static int read_varint(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return -1;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7F) << shift;
        if (b < 0x80) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static uint64_t load_le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* The next field: 1 (read), 0 (end), -1 (malformed, or a group). For wire type 2, val and len; for
 * 0, 1 and 5, num. */
static int next_field(Reader *r, uint32_t *field, int *wt, const uint8_t **val, size_t *len, uint64_t *num) {
    if (r->p >= r->end) return 0;
    uint64_t tag;
    if (read_varint(r, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) return -1;
    *field = (uint32_t)(tag >> 3);
    *wt = (int)(tag & 7);
    switch (*wt) {
        case 0:
            return read_varint(r, num) < 0 ? -1 : 1;
        case 1:
            if (r->end - r->p < 8) return -1;
            *num = load_le(r->p, 8);
            r->p += 8;
            return 1;
        case 5:
            if (r->end - r->p < 4) return -1;
            *num = load_le(r->p, 4);
            r->p += 4;
            return 1;
        case 2: {
            uint64_t n;
            if (read_varint(r, &n) < 0 || n > (uint64_t)(r->end - r->p)) return -1;
            *val = r->p;
            *len = (size_t)n;
            r->p += n;
            return 1;
        }
        default:
            return -1;
    }
}

/* ---------------------------------------------------------------- values */

enum { V_NONE, V_STR, V_INT, V_DOUBLE, V_BOOL, V_ANY, V_PY };

typedef struct {
    int kind;
    const char *s; /* V_STR: UTF-8; V_ANY: the serialized AnyValue */
    Py_ssize_t n;
    int64_t i;
    double d;
    PyObject *obj; /* borrowed: V_PY's object, or V_STR's str when it came from one */
} Val;

#define MAX_ENTRIES 256
#define MAX_KEEP 48

typedef struct {
    const char *key;
    size_t keylen;
    const uint8_t *value; /* the serialized AnyValue (NULL: no value field) */
    size_t valuelen;
} Entry;

/* One call's state. Every object it creates goes to keep[] and is released at the end. */
typedef struct {
    PyObject *view;
    int is_logs;
    const Layout *layout;
    const uint8_t *raw;
    Py_ssize_t raw_n;
    int scanned; /* scan(): 0 not yet, 1 done, -1 malformed */
    Entry rec[MAX_ENTRIES];
    int nrec;
    uint64_t fixed[16];
    uint32_t fixed_seen;
    int last_value_field;
    const uint8_t *body;
    size_t body_len;
    int body_state;
    Entry body_entries[MAX_ENTRIES];
    int nbody;
    PyObject *res_d, *scope_d;
    PyObject *keep[MAX_KEEP];
    int nkeep;
    int have_time;
    uint64_t time_ns;
    char time_buf[40];
    char id_buf[40];
    int id_done;
} Ctx;

/* Keep an object (a new reference) alive for the call; NULL in, or no room: -1 (reference dropped). */
static int keep(Ctx *c, PyObject *o) {
    if (o == NULL) return -1;
    if (c->nkeep >= MAX_KEEP) {
        Py_DECREF(o);
        return -1;
    }
    c->keep[c->nkeep++] = o;
    return 0;
}

/* A serialized AnyValue → Val, as attributes.any_value reads it. -1: cannot tell here. */
static int any_to_val(const uint8_t *p, size_t n, Val *v) {
    Reader r = {p, p + n};
    uint32_t field;
    int wt, rc;
    const uint8_t *val = NULL;
    size_t len = 0;
    uint64_t num = 0;
    v->kind = V_NONE;
    while ((rc = next_field(&r, &field, &wt, &val, &len, &num)) == 1) {
        switch (field) {
            case 1:
                if (wt != 2) return -1;
                v->kind = V_STR;
                v->s = (const char *)val;
                v->n = (Py_ssize_t)len;
                v->obj = NULL;
                break;
            case 2:
                if (wt != 0) return -1;
                v->kind = V_BOOL;
                v->i = num != 0;
                break;
            case 3:
                if (wt != 0) return -1;
                v->kind = V_INT;
                v->i = (int64_t)num;
                break;
            case 4:
                if (wt != 1) return -1;
                v->kind = V_DOUBLE;
                memcpy(&v->d, &num, 8);
                break;
            case 5:
            case 6:
            case 7:
                if (wt != 2) return -1;
                v->kind = V_ANY;
                v->s = (const char *)p;
                v->n = (Py_ssize_t)n;
                break;
            case 8: /* string_value_strindex: no value in versions that know it, an unknown field
                       (the value before it stands) in those that do not: Python decides */
                return -1;
            default: /* unknown to this version: kept aside by protobuf, no value */
                break;
        }
    }
    return rc < 0 ? -1 : 0;
}

/* One serialized KeyValue → an index entry. */
static int index_kv(const uint8_t *p, size_t n, Entry *e) {
    e->key = "";
    e->keylen = 0;
    e->value = NULL;
    e->valuelen = 0;
    Reader kv = {p, p + n};
    uint32_t field;
    int wt, rc, values = 0;
    const uint8_t *val = NULL;
    size_t len = 0;
    uint64_t num = 0;
    while ((rc = next_field(&kv, &field, &wt, &val, &len, &num)) == 1) {
        if (field == 1) {
            if (wt != 2) return -1;
            e->key = (const char *)val;
            e->keylen = len;
        } else if (field == 2) {
            if (wt != 2 || values++) return -1; /* two values would merge: leave it to protobuf */
            e->value = val;
            e->valuelen = len;
        }
    }
    return rc < 0 ? -1 : 0;
}

/* Index the KeyValues of a repeated KeyValue field `number` of message bytes p[0:n]. */
static int index_kvs(const uint8_t *p, size_t n, uint32_t number, Entry *out, int *count) {
    Reader r = {p, p + n};
    uint32_t field;
    int wt, rc;
    const uint8_t *val = NULL;
    size_t len = 0;
    uint64_t num = 0;
    *count = 0;
    while ((rc = next_field(&r, &field, &wt, &val, &len, &num)) == 1) {
        if (field != number || wt != 2) continue;
        if (*count >= MAX_ENTRIES || index_kv(val, len, &out[(*count)++]) < 0) return -1;
    }
    return rc < 0 ? -1 : 0;
}

/* The value of `key` in an index (the last entry with it wins, as in a dict built from the list). */
static int lookup(const Entry *entries, int count, const char *key, size_t keylen, Val *v) {
    for (int i = count - 1; i >= 0; i--) {
        const Entry *e = &entries[i];
        if (e->keylen == keylen && memcmp(e->key, key, keylen) == 0) {
            if (e->value == NULL) {
                v->kind = V_NONE;
                return 0;
            }
            return any_to_val(e->value, e->valuelen, v);
        }
    }
    v->kind = V_NONE;
    return 0;
}

/* One pass over the record's top-level fields: its attributes indexed, its fixed64 fields (times,
 * point values, sums, counts: field numbers below 16) kept, its body found. What protobuf would
 * set aside as unknown (a known number with another wire type) is skipped here too. */
static int scan(Ctx *c) {
    if (c->scanned != 0) return c->scanned;
    c->scanned = -1;
    uint32_t attrs = c->is_logs ? LOG_ATTRS : (uint32_t)c->layout->attrs;
    Reader r = {c->raw, c->raw + c->raw_n};
    uint32_t field;
    int wt, rc, bodies = 0;
    const uint8_t *val = NULL;
    size_t len = 0;
    uint64_t num = 0;
    c->nrec = 0;
    c->fixed_seen = 0;
    c->last_value_field = 0;
    c->body = NULL;
    c->body_len = 0;
    while ((rc = next_field(&r, &field, &wt, &val, &len, &num)) == 1) {
        if (field == attrs && wt == 2) {
            if (c->nrec >= MAX_ENTRIES || index_kv(val, len, &c->rec[c->nrec++]) < 0) return -1;
        } else if (wt == 1 && field < 16) {
            c->fixed[field] = num;
            c->fixed_seen |= 1u << field;
            if (!c->is_logs && ((int)field == c->layout->as_double || (int)field == c->layout->as_int))
                c->last_value_field = (int)field;
        } else if (c->is_logs && field == LOG_BODY && wt == 2) {
            if (bodies++) return -1; /* two bodies merge: leave it to protobuf */
            c->body = val;
            c->body_len = len;
        }
    }
    if (rc < 0) return -1;
    c->scanned = 1;
    return 1;
}

/* A fixed64 field of the record (0 when absent); *present says whether it was there. */
static uint64_t fixed(const Ctx *c, int number, int *present) {
    *present = number > 0 && number < 16 && (c->fixed_seen >> number) & 1u;
    return *present ? c->fixed[number] : 0;
}

/* The keys of a map (kvlist) body; none for any other body. */
static int ensure_body(Ctx *c) {
    if (c->body_state != 0) return c->body_state;
    c->body_state = -1;
    c->nbody = 0;
    if (scan(c) < 0) return -1;
    if (c->body != NULL) {
        Reader b = {c->body, c->body + c->body_len};
        uint32_t field;
        int wt, rc;
        const uint8_t *val = NULL, *kvlist = NULL;
        size_t len = 0, kvlist_len = 0;
        uint64_t num = 0;
        int last = 0, kvlists = 0;
        while ((rc = next_field(&b, &field, &wt, &val, &len, &num)) == 1) {
            /* the oneof's last member on the wire wins; a member with another wire type is an
               unknown field to protobuf, and changes nothing */
            static const int member_wt[9] = {-1, 2, 0, 0, 1, 2, 2, 2, 0};
            if (field >= 1 && field <= 8 && wt == member_wt[field]) last = (int)field;
            if (field == 6) {
                if (wt != 2 || kvlists++) return -1;
                kvlist = val;
                kvlist_len = len;
            }
        }
        if (rc < 0) return -1;
        if (last == 6 && index_kvs(kvlist, kvlist_len, 1, c->body_entries, &c->nbody) < 0) return -1;
    }
    c->body_state = 1;
    return 1;
}

/* A Python value → Val (borrowed: the object must outlive the Val). */
static int py_to_val(PyObject *o, Val *v) {
    v->obj = o;
    if (o == NULL || o == Py_None) {
        v->kind = V_NONE;
        return 0;
    }
    if (PyUnicode_CheckExact(o)) {
        v->s = PyUnicode_AsUTF8AndSize(o, &v->n);
        if (v->s == NULL) {
            soft_clear();
            return -1;
        }
        v->kind = V_STR;
        return 0;
    }
    if (PyBool_Check(o)) {
        v->kind = V_BOOL;
        v->i = o == Py_True;
        return 0;
    }
    if (PyLong_CheckExact(o)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (x == -1 && PyErr_Occurred()) {
            soft_clear();
            return -1;
        }
        if (overflow) {
            v->kind = V_PY;
            return 0;
        }
        v->kind = V_INT;
        v->i = x;
        return 0;
    }
    if (PyFloat_CheckExact(o)) {
        v->kind = V_DOUBLE;
        v->d = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    v->kind = V_PY;
    return 0;
}

/* Val → a new reference to its Python value (what the Python engine would hold). */
static PyObject *val_to_py(const Val *v) {
    switch (v->kind) {
        case V_NONE:
            Py_RETURN_NONE;
        case V_STR:
            if (v->obj != NULL && PyUnicode_CheckExact(v->obj)) {
                Py_INCREF(v->obj);
                return v->obj;
            }
            return PyUnicode_DecodeUTF8(v->s, v->n, "strict");
        case V_INT:
            return PyLong_FromLongLong(v->i);
        case V_DOUBLE:
            return PyFloat_FromDouble(v->d);
        case V_BOOL:
            return PyBool_FromLong((long)v->i);
        case V_ANY: {
            PyObject *raw = PyBytes_FromStringAndSize(v->s, v->n);
            if (raw == NULL) return NULL;
            PyObject *out = PyObject_CallOneArg(g_value_of, raw);
            Py_DECREF(raw);
            return out;
        }
        default:
            Py_INCREF(v->obj);
            return v->obj;
    }
}

/* ---------------------------------------------------------------- JSON out */

typedef struct {
    char *buf;
    size_t len, cap;
    char small[1024];
} Out;

static int out_reserve(Out *o, size_t extra) {
    if (o->len + extra <= o->cap) return 0;
    size_t cap = o->cap * 2;
    while (cap < o->len + extra) cap *= 2;
    char *buf = o->buf == o->small ? PyMem_Malloc(cap) : PyMem_Realloc(o->buf, cap);
    if (buf == NULL) return -1;
    if (o->buf == o->small) memcpy(buf, o->small, o->len);
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static int out_raw(Out *o, const char *s, size_t n) {
    if (out_reserve(o, n) < 0) return -1;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

#define OUT_LIT(o, s) out_raw((o), (s), sizeof(s) - 1)

static int out_bytes(Out *o, PyObject *b) { return out_raw(o, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b)); }

/* A JSON string as orjson writes it: ", \\ and control characters escaped, the rest as is. */
static int out_str(Out *o, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (out_reserve(o, (size_t)n * 6 + 2) < 0) return -1;
    char *w = o->buf + o->len;
    *w++ = '"';
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
        memcpy(w, s + run, (size_t)(i - run));
        w += i - run;
        run = i + 1;
        *w++ = '\\';
        switch (ch) {
            case '"': *w++ = '"'; break;
            case '\\': *w++ = '\\'; break;
            case '\b': *w++ = 'b'; break;
            case '\t': *w++ = 't'; break;
            case '\n': *w++ = 'n'; break;
            case '\f': *w++ = 'f'; break;
            case '\r': *w++ = 'r'; break;
            default:
                *w++ = 'u';
                *w++ = '0';
                *w++ = '0';
                *w++ = hex[ch >> 4];
                *w++ = hex[ch & 15];
        }
    }
    memcpy(w, s + run, (size_t)(n - run));
    w += n - run;
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
    return 0;
}

static int out_int(Out *o, int64_t x) {
    char tmp[24];
    char *end = tmp + sizeof tmp, *w = end;
    uint64_t u = x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
    do {
        *--w = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (x < 0) *--w = '-';
    return out_raw(o, w, (size_t)(end - w));
}

/* orjson's own text for a value it can write; -1 for anything else, or a null inside (which the
 * Python build checks for NaN: it decides). */
static int out_dumps(Out *o, PyObject *value) {
    PyObject *text = PyObject_CallOneArg(g_dumps, value);
    if (text == NULL) {
        soft_clear();
        return -1;
    }
    int rc = -1;
    if (PyBytes_Check(text) && memmem(PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text), "null", 4) == NULL)
        rc = out_bytes(o, text);
    Py_DECREF(text);
    return rc;
}

/* out_dumps of a new reference (NULL: a failed conversion), released here. */
static int out_new(Out *o, PyObject *value) {
    if (value == NULL) {
        soft_clear();
        return -1;
    }
    int rc = out_dumps(o, value);
    Py_DECREF(value);
    return rc;
}

static int out_double(Out *o, double d) {
    if (!isfinite(d)) return -1; /* JSON has no NaN: the Python build rejects it */
    return out_new(o, PyFloat_FromDouble(d));
}

static int out_val(Out *o, const Val *v) {
    switch (v->kind) {
        case V_STR: return out_str(o, v->s, v->n);
        case V_INT: return out_int(o, v->i);
        case V_DOUBLE: return out_double(o, v->d);
        case V_BOOL: return v->i ? OUT_LIT(o, "true") : OUT_LIT(o, "false");
        case V_NONE: return -1;
        default: return out_new(o, val_to_py(v));
    }
}

/* ---------------------------------------------------------------- times and ids */

/* x in exactly `width` decimal digits (zero-padded), at w; the end. */
static char *digits(char *w, uint64_t x, int width) {
    for (int i = width - 1; i >= 0; i--) {
        w[i] = (char)('0' + x % 10);
        x /= 10;
    }
    return w + width;
}

/* Unix ns → format_time's text: YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]Z. */
static int format_time(uint64_t ns, char *out) {
    uint64_t seconds = ns / 1000000000ULL, fraction = ns % 1000000000ULL;
    int64_t days = (int64_t)(seconds / 86400);
    int sod = (int)(seconds % 86400);
    /* civil_from_days (H. Hinnant) */
    int64_t z = days + 719468;
    int64_t era = z / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1);
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    if (m <= 2) y++;
    if (y > 9999) return -1;
    char *w = out;
    w = digits(w, (uint64_t)y, 4);
    *w++ = '-';
    w = digits(w, (uint64_t)m, 2);
    *w++ = '-';
    w = digits(w, (uint64_t)d, 2);
    *w++ = 'T';
    w = digits(w, (uint64_t)(sod / 3600), 2);
    *w++ = ':';
    w = digits(w, (uint64_t)(sod / 60 % 60), 2);
    *w++ = ':';
    w = digits(w, (uint64_t)(sod % 60), 2);
    if (fraction != 0) {
        *w++ = '.';
        if (fraction % 1000000 == 0)
            w = digits(w, fraction / 1000000, 3);
        else if (fraction % 1000 == 0)
            w = digits(w, fraction / 1000, 6);
        else
            w = digits(w, fraction, 9);
    }
    *w++ = 'Z';
    *w = 0;
    return (int)(w - out);
}

static int received_ns(Ctx *c, uint64_t *out) {
    PyObject *o = PyObject_GetAttr(c->view, s_received_ns);
    if (o == NULL) {
        soft_clear();
        return -1;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(o);
    Py_DECREF(o);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        soft_clear();
        return -1;
    }
    *out = x;
    return 0;
}

/* The default event time: the record's time (logs: else its observed time), else when received. */
static int default_time(Ctx *c, Val *v) {
    if (!c->have_time) {
        uint64_t ns;
        int present;
        if (scan(c) < 0) return -1;
        ns = fixed(c, c->is_logs ? LOG_TIME : c->layout->time, &present);
        if (ns == 0 && c->is_logs) ns = fixed(c, LOG_OBSERVED, &present);
        if (ns == 0 && received_ns(c, &ns) < 0) return -1;
        if (format_time(ns, c->time_buf) < 0) return -1;
        c->time_ns = ns;
        c->have_time = 1;
    }
    v->kind = V_STR;
    v->s = c->time_buf;
    v->n = (Py_ssize_t)strlen(c->time_buf);
    v->obj = NULL;
    return 0;
}

/* holder.slot when it is set (a view's cached value), else holder.method(): a new reference. */
static PyObject *cached(PyObject *holder, PyObject *slot, PyObject *method) {
    PyObject *value = PyObject_GetAttr(holder, slot);
    if (value != Py_None) return value;
    Py_DECREF(value);
    return PyObject_CallMethodNoArgs(holder, method);
}

static int default_source(Ctx *c, Val *v) {
    PyObject *res = PyObject_GetAttr(c->view, s_res);
    if (res == NULL) {
        soft_clear();
        return -1;
    }
    PyObject *source = cached(res, s_source_slot, s_default_source);
    Py_DECREF(res);
    if (keep(c, source) < 0) {
        soft_clear();
        return -1;
    }
    return py_to_val(source, v);
}

static void uuid_text(const uint8_t digest[16], char *out);

/* The record's hasher (view.hasher(), ids.py): the scope's, extended with the signal and the
 * record's bytes (logs: frame(b"logs"), frame(record); metrics: the metric key, frame(point)).
 * Made here when the view has none yet, and kept on the view for the rules that follow. */
static PyObject *record_hasher(Ctx *c) {
    PyObject *hasher = PyObject_GetAttr(c->view, s_hasher_slot);
    if (hasher != Py_None) return hasher;
    Py_DECREF(hasher);
    PyObject *scope = PyObject_GetAttr(c->view, s_scope);
    if (scope == NULL) return NULL;
    PyObject *parent = cached(scope, s_hasher_slot, s_hasher);
    Py_DECREF(scope);
    if (parent == NULL) return NULL;
    PyObject *prefix = c->is_logs ? NULL : PyObject_GetAttr(c->view, s_metric_key);
    if (!PyObject_TypeCheck(parent, &HasherType) || (!c->is_logs && (prefix == NULL || !PyBytes_Check(prefix)))) {
        Py_DECREF(parent);
        Py_XDECREF(prefix);
        if (soft_clear()) return NULL;
        return PyObject_CallMethodNoArgs(c->view, s_hasher); /* let Python make it */
    }
    HasherObject *made = PyObject_New(HasherObject, &HasherType);
    if (made == NULL) {
        Py_DECREF(parent);
        Py_XDECREF(prefix);
        return NULL;
    }
    made->st = ((HasherObject *)parent)->st;
    Py_DECREF(parent);
    uint8_t frame[8];
    if (c->is_logs) {
        static const uint8_t logs[12] = {4, 0, 0, 0, 0, 0, 0, 0, 'l', 'o', 'g', 's'};
        blake2b_update(&made->st, logs, sizeof logs);
    } else {
        blake2b_update(&made->st, (const uint8_t *)PyBytes_AS_STRING(prefix), (size_t)PyBytes_GET_SIZE(prefix));
        Py_DECREF(prefix);
    }
    uint64_t n = (uint64_t)c->raw_n;
    for (int i = 0; i < 8; i++) frame[i] = (uint8_t)(n >> (8 * i));
    blake2b_update(&made->st, frame, 8);
    blake2b_update(&made->st, c->raw, (size_t)c->raw_n);
    if (PyObject_SetAttr(c->view, s_hasher_slot, (PyObject *)made) < 0) {
        Py_DECREF(made);
        return NULL;
    }
    return (PyObject *)made;
}

static int default_id(Ctx *c, PyObject *rule_key, Val *v) {
    if (!c->id_done) {
        PyObject *hasher = record_hasher(c);
        if (keep(c, hasher) < 0) {
            soft_clear();
            return -1;
        }
        if (!PyObject_TypeCheck(hasher, &HasherType) || ((HasherObject *)hasher)->st.outlen != 16) return -1;
        blake2b_state st = ((HasherObject *)hasher)->st;
        blake2b_update(&st, (const uint8_t *)PyBytes_AS_STRING(rule_key), (size_t)PyBytes_GET_SIZE(rule_key));
        uint8_t digest[16];
        blake2b_final(&st, digest);
        uuid_text(digest, c->id_buf);
        c->id_done = 1;
    }
    v->kind = V_STR;
    v->s = c->id_buf;
    v->n = 36;
    v->obj = NULL;
    return 0;
}

/* ids.format_uuid8: version 8, RFC 9562 variant. */
static void uuid_text(const uint8_t digest[16], char *out) {
    static const char hex[] = "0123456789abcdef";
    char h[32];
    for (int i = 0; i < 16; i++) {
        h[2 * i] = hex[digest[i] >> 4];
        h[2 * i + 1] = hex[digest[i] & 15];
    }
    int k = 0;
    for (int i = 0; i < 32; i++) {
        if (i == 8 || i == 12 || i == 16 || i == 20) out[k++] = '-';
        char ch = h[i];
        if (i == 12) ch = '8';
        if (i == 16) ch = "89ab"[(h[16] <= '9' ? h[16] - '0' : h[16] - 'a' + 10) & 3];
        out[k++] = ch;
    }
    out[k] = 0;
}

/* ---------------------------------------------------------------- programs */

enum { S_RECORD, S_RESOURCE, S_SCOPE, S_BODY, S_NATIVE, S_PYGET, S_BUILTIN };
enum {
    G_POINT_VALUE,
    G_POINT_SUM,
    G_POINT_COUNT,
    G_POINT_TIME,
    G_POINT_START,
    G_RECORD_TIME,
    G_METRIC_NAME,
    G_METRIC_UNIT,
    G_METRIC_TYPE
};
enum { B_SOURCE = 1, B_TIME = 2, B_ID = 3 };
enum { T_EXISTS, T_ABSENT, T_EQUALS_TEXT, T_IN_TEXT, T_EQUALS_BOOL, T_CALL };
enum { C_NONE, C_INT, C_NUMBER, C_FLOAT, C_STRING, C_EVENT_STRING, C_PYTHON };
enum { M_DEFAULT, M_BUILTIN, M_OMIT, M_PYTHON };

typedef struct {
    int kind;
    int code;
    PyObject *arg; /* key str, or getter */
    const char *key;
    Py_ssize_t keylen;
} Step;

typedef struct {
    int literal;
    PyObject *lit_json;  /* bytes */
    PyObject *lit_value; /* the value itself */
    Step *steps;
    int nsteps;
} ReadSpec;

typedef struct {
    ReadSpec read;
    int test;
    PyObject *arg;
    const char **opts;
    Py_ssize_t *optlens;
    int nopts;
} Cond;

typedef struct {
    PyObject *key_json; /* data fields: the key as JSON text */
    ReadSpec read;
    int conv;
    PyObject *conv_fn;
    int missing;
    int builtin;
    PyObject *fallback_json, *fallback_value;
    int empty;
} Field;

typedef struct {
    PyObject_HEAD int is_logs;
    PyObject *spec;
    PyObject *rule_key;
    Cond *conds;
    int nconds;
    Field head[4]; /* type, subject, source, time */
    Field *data;
    int ndata;
    Field id;
} ProgramObject;

static void free_read(ReadSpec *r) { PyMem_Free(r->steps); }

static void Program_dealloc(ProgramObject *self) {
    for (int i = 0; i < self->nconds; i++) {
        free_read(&self->conds[i].read);
        PyMem_Free(self->conds[i].opts);
        PyMem_Free(self->conds[i].optlens);
    }
    PyMem_Free(self->conds);
    for (int i = 0; i < 4; i++) free_read(&self->head[i].read);
    for (int i = 0; i < self->ndata; i++) free_read(&self->data[i].read);
    PyMem_Free(self->data);
    free_read(&self->id.read);
    Py_XDECREF(self->spec);
    Py_XDECREF(self->rule_key);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int bad_spec(const char *what) {
    PyErr_Format(PyExc_TypeError, "bad native rule spec: %s", what);
    return -1;
}

/* read = ("lit", json_bytes, value) | ("path", ((kind, arg), ...)) */
static int parse_read(PyObject *spec, ReadSpec *r) {
    memset(r, 0, sizeof *r);
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) < 2) return bad_spec("read");
    PyObject *tag = PyTuple_GET_ITEM(spec, 0);
    if (PyUnicode_CompareWithASCIIString(tag, "lit") == 0) {
        if (PyTuple_GET_SIZE(spec) != 3 || !PyBytes_Check(PyTuple_GET_ITEM(spec, 1))) return bad_spec("literal");
        r->literal = 1;
        r->lit_json = PyTuple_GET_ITEM(spec, 1);
        r->lit_value = PyTuple_GET_ITEM(spec, 2);
        return 0;
    }
    PyObject *steps = PyTuple_GET_ITEM(spec, 1);
    if (!PyTuple_Check(steps)) return bad_spec("steps");
    r->nsteps = (int)PyTuple_GET_SIZE(steps);
    r->steps = PyMem_Calloc((size_t)r->nsteps + 1, sizeof(Step));
    if (r->steps == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < r->nsteps; i++) {
        PyObject *step = PyTuple_GET_ITEM(steps, i);
        if (!PyTuple_Check(step) || PyTuple_GET_SIZE(step) != 2) return bad_spec("step");
        Step *s = &r->steps[i];
        s->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(step, 0));
        s->arg = PyTuple_GET_ITEM(step, 1);
        if (s->kind <= S_BODY) {
            if (!PyUnicode_CheckExact(s->arg)) return bad_spec("key");
            s->key = PyUnicode_AsUTF8AndSize(s->arg, &s->keylen);
            if (s->key == NULL) return -1;
        } else if (s->kind == S_NATIVE || s->kind == S_BUILTIN) {
            s->code = (int)PyLong_AsLong(s->arg);
        } else if (s->kind != S_PYGET || !PyCallable_Check(s->arg)) {
            return bad_spec("step kind");
        }
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

/* field = (read, conv, conv_fn, missing, fallback, empty) */
static int parse_field(PyObject *spec, Field *f) {
    memset(f, 0, sizeof *f);
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 6) return bad_spec("field");
    if (parse_read(PyTuple_GET_ITEM(spec, 0), &f->read) < 0) return -1;
    f->conv = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 1));
    f->conv_fn = PyTuple_GET_ITEM(spec, 2);
    f->missing = (int)PyLong_AsLong(PyTuple_GET_ITEM(spec, 3));
    PyObject *fallback = PyTuple_GET_ITEM(spec, 4);
    f->empty = PyObject_IsTrue(PyTuple_GET_ITEM(spec, 5));
    if (PyErr_Occurred()) return -1;
    if (f->conv == C_PYTHON && !PyCallable_Check(f->conv_fn)) return bad_spec("converter");
    if (f->missing == M_DEFAULT) {
        if (!PyTuple_Check(fallback) || PyTuple_GET_SIZE(fallback) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(fallback, 0)))
            return bad_spec("default");
        f->fallback_json = PyTuple_GET_ITEM(fallback, 0);
        f->fallback_value = PyTuple_GET_ITEM(fallback, 1);
    } else if (f->missing == M_BUILTIN) {
        f->builtin = (int)PyLong_AsLong(fallback);
        if (PyErr_Occurred()) return -1;
    }
    return 0;
}

/* spec = (is_logs, conds, head, data, id, rule_key); cond = (read, test, arg); data = ((key_json, field), ...) */
static PyObject *Program_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "O!", &PyTuple_Type, &spec)) return NULL;
    if (PyTuple_GET_SIZE(spec) != 6) return bad_spec("top"), NULL;
    ProgramObject *self = (ProgramObject *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(spec);
    self->spec = spec;
    self->is_logs = PyObject_IsTrue(PyTuple_GET_ITEM(spec, 0));
    if (self->is_logs < 0) goto fail;
    PyObject *conds = PyTuple_GET_ITEM(spec, 1), *head = PyTuple_GET_ITEM(spec, 2),
             *data = PyTuple_GET_ITEM(spec, 3), *rule_key = PyTuple_GET_ITEM(spec, 5);
    if (!PyTuple_Check(conds) || !PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 4 || !PyTuple_Check(data) ||
        !PyBytes_Check(rule_key)) {
        bad_spec("shape");
        goto fail;
    }
    Py_INCREF(rule_key);
    self->rule_key = rule_key;
    self->conds = PyMem_Calloc((size_t)PyTuple_GET_SIZE(conds) + 1, sizeof(Cond));
    self->data = PyMem_Calloc((size_t)PyTuple_GET_SIZE(data) + 1, sizeof(Field));
    if (self->conds == NULL || self->data == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(conds); i++) {
        PyObject *c = PyTuple_GET_ITEM(conds, i);
        Cond *cond = &self->conds[self->nconds++];
        if (!PyTuple_Check(c) || PyTuple_GET_SIZE(c) != 3) {
            bad_spec("condition");
            goto fail;
        }
        if (parse_read(PyTuple_GET_ITEM(c, 0), &cond->read) < 0) goto fail;
        cond->test = (int)PyLong_AsLong(PyTuple_GET_ITEM(c, 1));
        cond->arg = PyTuple_GET_ITEM(c, 2);
        if (PyErr_Occurred()) goto fail;
        if (cond->test == T_IN_TEXT || cond->test == T_EQUALS_TEXT) {
            PyObject *options = cond->arg;
            int single = cond->test == T_EQUALS_TEXT;
            cond->nopts = single ? 1 : (int)PyTuple_GET_SIZE(options);
            cond->opts = PyMem_Calloc((size_t)cond->nopts + 1, sizeof(char *));
            cond->optlens = PyMem_Calloc((size_t)cond->nopts + 1, sizeof(Py_ssize_t));
            if (cond->opts == NULL || cond->optlens == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            for (int k = 0; k < cond->nopts; k++) {
                PyObject *text = single ? options : PyTuple_GET_ITEM(options, k);
                if (!PyUnicode_CheckExact(text)) {
                    bad_spec("text option");
                    goto fail;
                }
                cond->opts[k] = PyUnicode_AsUTF8AndSize(text, &cond->optlens[k]);
                if (cond->opts[k] == NULL) goto fail;
            }
        } else if (cond->test == T_CALL && !PyCallable_Check(cond->arg)) {
            bad_spec("test");
            goto fail;
        }
    }
    for (int i = 0; i < 4; i++)
        if (parse_field(PyTuple_GET_ITEM(head, i), &self->head[i]) < 0) goto fail;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(data); i++) {
        PyObject *item = PyTuple_GET_ITEM(data, i);
        Field *f = &self->data[self->ndata++];
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(item, 0))) {
            bad_spec("data field");
            goto fail;
        }
        if (parse_field(PyTuple_GET_ITEM(item, 1), f) < 0) goto fail;
        f->key_json = PyTuple_GET_ITEM(item, 0);
    }
    if (parse_field(PyTuple_GET_ITEM(spec, 4), &self->id) < 0) goto fail;
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *attr_dict(Ctx *c, PyObject *holder_name) {
    PyObject *holder = PyObject_GetAttr(c->view, holder_name);
    if (holder == NULL) return NULL;
    PyObject *d = PyObject_GetAttr(holder, s_attrs);
    if (d == Py_None) {
        Py_DECREF(d);
        d = PyObject_CallMethodNoArgs(holder, s_values);
    }
    Py_DECREF(holder);
    if (d != NULL && !PyDict_CheckExact(d)) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* A metric's name or unit ("" is no value), or its type. */
static int metric_text(Ctx *c, PyObject *name, Val *v) {
    PyObject *text;
    if (name == s_metric_type) {
        text = PyObject_GetAttr(c->view, s_metric_type);
    } else {
        PyObject *metric = PyObject_GetAttr(c->view, s_metric);
        if (metric == NULL) return -1;
        text = PyObject_GetAttr(metric, name);
        Py_DECREF(metric);
    }
    if (keep(c, text) < 0) return -1;
    if (py_to_val(text, v) < 0) return -1;
    if (v->kind == V_STR && v->n == 0) v->kind = V_NONE;
    return 0;
}

static int native_get(Ctx *c, int code, Val *v) {
    uint64_t x;
    int present;
    const Layout *l = c->layout;
    v->kind = V_NONE;
    v->obj = NULL;
    switch (code) {
        case G_METRIC_NAME: return metric_text(c, s_name, v);
        case G_METRIC_UNIT: return metric_text(c, s_unit, v);
        case G_METRIC_TYPE: return metric_text(c, s_metric_type, v);
        default:
            break;
    }
    if (scan(c) < 0) return -1;
    switch (code) {
        case G_RECORD_TIME:
        case G_POINT_TIME:
        case G_POINT_START:
            x = fixed(c, code == G_RECORD_TIME ? LOG_TIME : code == G_POINT_TIME ? l->time : l->start, &present);
            break;
        case G_POINT_COUNT:
            if (l->count == 0) return 0;
            x = fixed(c, l->count, &present);
            if (x > (uint64_t)INT64_MAX) return -1;
            v->kind = V_INT; /* 0 is a count */
            v->i = (int64_t)x;
            return 0;
        case G_POINT_VALUE:
        case G_POINT_SUM:
            if (l->as_double != 0) { /* a number point: its value, the last of the oneof (point.sum: none) */
                if (code == G_POINT_SUM || c->last_value_field == 0) return 0;
                x = fixed(c, c->last_value_field, &present);
                if (c->last_value_field == l->as_double) {
                    v->kind = V_DOUBLE;
                    memcpy(&v->d, &x, 8);
                } else {
                    v->kind = V_INT;
                    v->i = (int64_t)x;
                }
                return 0;
            }
            x = fixed(c, l->sum, &present);
            if (present || !l->sum_optional) {
                v->kind = V_DOUBLE;
                memcpy(&v->d, &x, 8);
            }
            return 0;
        default:
            return -1;
    }
    /* times: 0 is no value */
    if (x == 0) return 0;
    if (x > (uint64_t)INT64_MAX) return -1;
    v->kind = V_INT;
    v->i = (int64_t)x;
    return 0;
}

static int is_empty_text(const Val *v) { return v->kind == V_STR && v->n == 0; }

/* The value a read gives (V_NONE: none). `empty`: "" is no value either. Sets *from_builtin to the
 * builtin that gave it (0: none). */
static int eval_read(Ctx *c, ProgramObject *prog, const ReadSpec *r, int empty, Val *v, int *from_builtin) {
    *from_builtin = 0;
    v->kind = V_NONE;
    v->obj = NULL;
    if (r->literal) return py_to_val(r->lit_value, v);
    for (int i = 0; i < r->nsteps; i++) {
        const Step *s = &r->steps[i];
        switch (s->kind) {
            case S_RECORD:
                if (scan(c) < 0) return -1;
                if (lookup(c->rec, c->nrec, s->key, (size_t)s->keylen, v) < 0) return -1;
                break;
            case S_BODY:
                if (ensure_body(c) < 0) return -1;
                if (lookup(c->body_entries, c->nbody, s->key, (size_t)s->keylen, v) < 0) return -1;
                break;
            case S_RESOURCE:
            case S_SCOPE: {
                PyObject **d = s->kind == S_RESOURCE ? &c->res_d : &c->scope_d;
                if (*d == NULL) {
                    *d = attr_dict(c, s->kind == S_RESOURCE ? s_res : s_scope);
                    if (keep(c, *d) < 0) {
                        *d = NULL;
                        soft_clear();
                        return -1;
                    }
                }
                PyObject *x = PyDict_GetItemWithError(*d, s->arg);
                if (x == NULL && PyErr_Occurred()) {
                    soft_clear();
                    return -1;
                }
                if (py_to_val(x, v) < 0) return -1;
                break;
            }
            case S_NATIVE:
                if (native_get(c, s->code, v) < 0) return -1;
                break;
            case S_PYGET: {
                PyObject *x = PyObject_CallOneArg(s->arg, c->view);
                if (keep(c, x) < 0) {
                    soft_clear();
                    return -1;
                }
                if (py_to_val(x, v) < 0) return -1;
                break;
            }
            case S_BUILTIN:
                if (s->code == B_SOURCE) {
                    if (default_source(c, v) < 0) return -1;
                } else if (s->code == B_TIME) {
                    if (default_time(c, v) < 0) return -1;
                } else if (default_id(c, prog->rule_key, v) < 0) {
                    return -1;
                }
                *from_builtin = s->code;
                break;
            default:
                return -1;
        }
        if (v->kind != V_NONE && !(empty && is_empty_text(v))) return 0;
        *from_builtin = 0;
    }
    v->kind = V_NONE;
    return 0;
}

static int text_in(const Val *v, const Cond *cond) {
    for (int k = 0; k < cond->nopts; k++)
        if (cond->optlens[k] == v->n && memcmp(cond->opts[k], v->s, (size_t)v->n) == 0) return 1;
    return 0;
}

/* 1: holds, 0: does not, -1: not here. */
static int eval_cond(Ctx *c, ProgramObject *prog, const Cond *cond) {
    Val v;
    int builtin;
    if (eval_read(c, prog, &cond->read, 0, &v, &builtin) < 0) return -1;
    switch (cond->test) {
        case T_EXISTS: return v.kind != V_NONE;
        case T_ABSENT: return v.kind == V_NONE;
        case T_EQUALS_TEXT:
        case T_IN_TEXT: return v.kind == V_STR && text_in(&v, cond);
        case T_EQUALS_BOOL: return v.kind == V_BOOL && v.i == (cond->arg == Py_True);
        default: {
            PyObject *x = val_to_py(&v);
            if (x == NULL) {
                soft_clear();
                return -1;
            }
            PyObject *result = PyObject_CallOneArg(cond->arg, x);
            Py_DECREF(x);
            if (result == NULL) {
                soft_clear();
                return -1;
            }
            int truth = PyObject_IsTrue(result);
            Py_DECREF(result);
            if (truth < 0) soft_clear();
            return truth;
        }
    }
}

static int whole_double_as_int(double d, int64_t *out) {
    if (!isfinite(d) || d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return -1;
    *out = (int64_t)d;
    return 0;
}

/* Convert v in place as the field's converter would; -1: not here. */
static int convert(Ctx *c, const Field *f, Val *v) {
    int64_t i;
    switch (f->conv) {
        case C_NONE: return 0;
        case C_INT:
            if (v->kind == V_INT) return 0;
            if (v->kind == V_DOUBLE && whole_double_as_int(v->d, &i) == 0) {
                v->kind = V_INT;
                v->i = i;
                return 0;
            }
            break;
        case C_NUMBER:
            if (v->kind == V_INT) return 0;
            if (v->kind == V_DOUBLE && isfinite(v->d)) {
                if (whole_double_as_int(v->d, &i) == 0) {
                    v->kind = V_INT;
                    v->i = i;
                    return 0;
                }
                if (v->d == floor(v->d)) break; /* whole, beyond int64: an int up to 2^64 - 1 in Python */
                return 0;
            }
            break;
        case C_FLOAT:
            if (v->kind == V_DOUBLE && isfinite(v->d)) return 0;
            break;
        case C_STRING:
            if (v->kind == V_STR) return 0;
            break;
        case C_EVENT_STRING:
            if (v->kind == V_STR && v->n > 0) return 0;
            break;
        default:
            break;
    }
    /* anything else: the Python converter, on the Python value */
    PyObject *convert_fn = f->conv_fn;
    if (convert_fn == NULL || convert_fn == Py_None) return -1;
    PyObject *x = val_to_py(v);
    if (x == NULL) {
        soft_clear();
        return -1;
    }
    PyObject *result = PyObject_CallOneArg(convert_fn, x);
    Py_DECREF(x);
    if (keep(c, result) < 0) {
        soft_clear(); /* a ValueError: the Python build rejects the record, with its reason */
        return -1;
    }
    return py_to_val(result, v) < 0 || v->kind == V_NONE ? -1 : 0;
}

/* A field's value: 1 (in *v; *json set instead for a literal or default), 0 (omitted), -1 (not here). */
static int eval_field(Ctx *c, ProgramObject *prog, const Field *f, Val *v, PyObject **json, int *from_builtin) {
    *json = NULL;
    *from_builtin = 0;
    if (f->read.literal) {
        *json = f->read.lit_json;
        return py_to_val(f->read.lit_value, v) < 0 ? -1 : 1;
    }
    if (eval_read(c, prog, &f->read, f->empty, v, from_builtin) < 0) return -1;
    if (v->kind != V_NONE) {
        if (*from_builtin) return 1; /* the builtins' values are final */
        return convert(c, f, v) < 0 ? -1 : 1;
    }
    switch (f->missing) {
        case M_DEFAULT:
            *json = f->fallback_json;
            return py_to_val(f->fallback_value, v) < 0 ? -1 : 1;
        case M_OMIT:
            return 0;
        case M_BUILTIN: {
            int rc = f->builtin == B_SOURCE ? default_source(c, v)
                     : f->builtin == B_TIME ? default_time(c, v)
                                            : default_id(c, prog->rule_key, v);
            *from_builtin = f->builtin;
            return rc < 0 ? -1 : 1;
        }
        default:
            return -1;
    }
}

static int out_field(Out *o, const Val *v, PyObject *json) {
    if (json != NULL) return out_bytes(o, json);
    return out_val(o, v);
}

/* A head field's text for the EncodedEvent (source, id): a new reference. */
static PyObject *val_text(const Val *v) {
    if (v->kind != V_STR) return NULL;
    return val_to_py(v);
}

static PyObject *Program_call(ProgramObject *self, PyObject *args, PyObject *kwds) {
    if (PyTuple_GET_SIZE(args) != 1) {
        PyErr_SetString(PyExc_TypeError, "Program(view)");
        return NULL;
    }
    Ctx c;
    c.view = PyTuple_GET_ITEM(args, 0);
    c.is_logs = self->is_logs;
    c.layout = NULL;
    c.scanned = c.body_state = 0;
    c.nrec = c.nbody = 0;
    c.res_d = c.scope_d = NULL;
    c.nkeep = 0;
    c.have_time = 0;
    c.id_done = 0;
    PyObject *result = Py_None;
    Out o;
    o.buf = o.small;
    o.len = 0;
    o.cap = sizeof o.small;

    PyObject *raw = cached(c.view, s_raw_slot, s_raw);
    if (keep(&c, raw) < 0 || !PyBytes_Check(raw)) {
        soft_clear();
        goto done;
    }
    c.raw = (const uint8_t *)PyBytes_AS_STRING(raw);
    c.raw_n = PyBytes_GET_SIZE(raw);
    if (!c.is_logs) {
        PyObject *point = PyObject_GetAttr(c.view, s_point);
        if (point == NULL) {
            soft_clear();
            goto done;
        }
        for (int i = 0; i < g_npoints; i++)
            if ((PyObject *)Py_TYPE(point) == g_points[i].cls) c.layout = &g_points[i];
        Py_DECREF(point);
        if (c.layout == NULL) goto done;
    }

    for (int i = 0; i < self->nconds; i++) {
        int holds = eval_cond(&c, self, &self->conds[i]);
        if (holds < 0) goto done;
        if (!holds) {
            result = Py_False;
            goto done;
        }
    }

    Val head[4], id;
    PyObject *head_json[4], *id_json;
    int head_builtin[4], id_builtin;
    for (int i = 0; i < 4; i++)
        if (eval_field(&c, self, &self->head[i], &head[i], &head_json[i], &head_builtin[i]) != 1) goto done;
    if (eval_field(&c, self, &self->id, &id, &id_json, &id_builtin) != 1) goto done;
    if (head[0].kind != V_STR || head[1].kind != V_STR || head[2].kind != V_STR || head[3].kind != V_STR ||
        id.kind != V_STR)
        goto done; /* the converters make text; anything else is the Python build's to judge */

    if (OUT_LIT(&o, "{\"specversion\":\"1.0\",\"id\":") < 0 || out_field(&o, &id, id_json) < 0 ||
        OUT_LIT(&o, ",\"source\":") < 0 || out_field(&o, &head[2], head_json[2]) < 0 ||
        OUT_LIT(&o, ",\"type\":") < 0 || out_field(&o, &head[0], head_json[0]) < 0 ||
        OUT_LIT(&o, ",\"subject\":") < 0 || out_field(&o, &head[1], head_json[1]) < 0 ||
        OUT_LIT(&o, ",\"time\":") < 0 || out_field(&o, &head[3], head_json[3]) < 0 ||
        OUT_LIT(&o, ",\"data\":{") < 0)
        goto done;
    int first = 1;
    for (int i = 0; i < self->ndata; i++) {
        const Field *f = &self->data[i];
        Val v;
        PyObject *json;
        int builtin;
        int rc = eval_field(&c, self, f, &v, &json, &builtin);
        if (rc < 0) goto done;
        if (rc == 0) continue;
        if ((!first && OUT_LIT(&o, ",") < 0) || out_bytes(&o, f->key_json) < 0 || OUT_LIT(&o, ":") < 0 ||
            out_field(&o, &v, json) < 0)
            goto done;
        first = 0;
    }
    if (OUT_LIT(&o, "}}") < 0) goto done;

    /* time_ms: the default time's own, else read from the text */
    long long time_ms;
    if (head_builtin[3] == B_TIME && head_json[3] == NULL) {
        time_ms = (long long)(c.time_ns / 1000000ULL);
    } else {
        PyObject *text = val_to_py(&head[3]);
        PyObject *ms = text == NULL ? NULL : PyObject_CallOneArg(g_time_millis, text);
        Py_XDECREF(text);
        if (ms == NULL) {
            soft_clear();
            goto done;
        }
        time_ms = PyLong_AsLongLong(ms);
        Py_DECREF(ms);
        if (time_ms == -1 && PyErr_Occurred()) {
            soft_clear();
            goto done;
        }
    }
    PyObject *source = val_text(&head[2]), *event_id = val_text(&id);
    PyObject *payload = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
    PyObject *ms = PyLong_FromLongLong(time_ms);
    PyObject *event = g_encoded->tp_alloc(g_encoded, 4);
    if (source == NULL || event_id == NULL || payload == NULL || ms == NULL || event == NULL) {
        Py_XDECREF(source);
        Py_XDECREF(event_id);
        Py_XDECREF(payload);
        Py_XDECREF(ms);
        Py_XDECREF(event);
        soft_clear();
        goto done;
    }
    PyTuple_SET_ITEM(event, 0, source);
    PyTuple_SET_ITEM(event, 1, event_id);
    PyTuple_SET_ITEM(event, 2, payload);
    PyTuple_SET_ITEM(event, 3, ms);
    result = event;
    for (int i = 0; i < c.nkeep; i++) Py_DECREF(c.keep[i]);
    if (o.buf != o.small) PyMem_Free(o.buf);
    return result;

done:
    for (int i = 0; i < c.nkeep; i++) Py_DECREF(c.keep[i]);
    if (o.buf != o.small) PyMem_Free(o.buf);
    if (soft_clear()) return NULL; /* KeyboardInterrupt and the like: raised */
    Py_INCREF(result);
    return result;
}

static PyTypeObject ProgramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "otlp_meter._native.Program",
    .tp_basicsize = sizeof(ProgramObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One rule compiled for C: Program(spec)(view) -> False | EncodedEvent | None.",
    .tp_new = Program_new,
    .tp_dealloc = (destructor)Program_dealloc,
    .tp_call = (ternaryfunc)Program_call,
};

/* ---------------------------------------------------------------- module */

/* setup(points, value_of, dumps, time_millis, EncodedEvent); points: ((cls, attrs, start, time,
 * as_double, as_int, sum, count, sum_optional), ...) with 0 for a field the type lacks. */
static PyObject *setup(PyObject *module, PyObject *args) {
    PyObject *points, *value_of, *dumps, *time_millis, *encoded;
    if (!PyArg_ParseTuple(args, "O!OOOO!", &PyTuple_Type, &points, &value_of, &dumps, &time_millis, &PyType_Type,
                          &encoded))
        return NULL;
    if (PyTuple_GET_SIZE(points) > 4) return PyErr_Format(PyExc_ValueError, "at most 4 point types");
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(points); i++) {
        Layout *l = &g_points[i];
        PyObject *cls;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(points, i), "Oiiiiiiii", &cls, &l->attrs, &l->start, &l->time,
                              &l->as_double, &l->as_int, &l->sum, &l->count, &l->sum_optional))
            return NULL;
        Py_INCREF(cls);
        Py_XSETREF(l->cls, cls);
    }
    g_npoints = (int)PyTuple_GET_SIZE(points);
    Py_INCREF(value_of);
    Py_XSETREF(g_value_of, value_of);
    Py_INCREF(dumps);
    Py_XSETREF(g_dumps, dumps);
    Py_INCREF(time_millis);
    Py_XSETREF(g_time_millis, time_millis);
    Py_INCREF(encoded);
    Py_XSETREF(g_encoded, (PyTypeObject *)encoded);
    Py_RETURN_NONE;
}

static PyObject *py_format_time(PyObject *module, PyObject *arg) {
    unsigned long long ns = PyLong_AsUnsignedLongLong(arg);
    if (ns == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    char text[40];
    int n = format_time(ns, text);
    if (n < 0) return PyErr_Format(PyExc_ValueError, "time %llu ns is outside 1970..9999", ns);
    return PyUnicode_FromStringAndSize(text, n);
}

static PyObject *py_uuid8(PyObject *module, PyObject *arg) {
    if (!PyBytes_Check(arg) || PyBytes_GET_SIZE(arg) != 16) {
        PyErr_SetString(PyExc_ValueError, "uuid8 takes 16 bytes");
        return NULL;
    }
    char text[40];
    uuid_text((const uint8_t *)PyBytes_AS_STRING(arg), text);
    return PyUnicode_FromStringAndSize(text, 36);
}

/* delta.stream_key's sort key of a serialized KeyValue (attributes.key_of): its key when the first
 * field is the key (tag 1, length-delimited), else the empty key. -1: truncated. */
static int kv_sort_key(const uint8_t *kv, size_t n, const uint8_t **key, size_t *key_n) {
    *key = kv;
    *key_n = 0;
    if (n == 0 || kv[0] != 0x0A) return 0;
    Reader r = {kv + 1, kv + n};
    uint64_t len;
    if (read_varint(&r, &len) < 0) return -1;
    size_t left = (size_t)(r.end - r.p);
    *key = r.p;
    *key_n = len < left ? (size_t)len : left; /* a slice past the end stops at it */
    return 0;
}

typedef struct {
    const uint8_t *kv, *key;
    size_t kv_n, key_n;
    Py_ssize_t order;
} StreamAttr;

static int stream_attr_cmp(const void *a, const void *b) {
    const StreamAttr *x = a, *y = b;
    size_t n = x->key_n < y->key_n ? x->key_n : y->key_n;
    int c = memcmp(x->key, y->key, n);
    if (c != 0) return c;
    if (x->key_n != y->key_n) return x->key_n < y->key_n ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order; /* stable, as sorted() is */
}

/* stream_key(metric_hasher, point_bytes, attributes_number, prefix) -> (key, attributes) | None:
 * delta.point_attributes and delta.stream_key in one pass. key: prefix + the digest of the hasher
 * fed each attribute KeyValue (framed: 8-byte little-endian length, bytes) in key order;
 * attributes: the point's attribute field alone, serialized. None: leave it to Python. */
static PyObject *py_stream_key(PyObject *module, PyObject *args) {
    PyObject *hasher;
    Py_buffer point, prefix;
    int number;
    if (!PyArg_ParseTuple(args, "O!y*iy*", &HasherType, &hasher, &point, &number, &prefix)) return NULL;
    PyObject *result = NULL;
    StreamAttr small[32], *attrs = small;
    Py_ssize_t count = 0, cap = 32;
    const uint8_t *p = point.buf, *end = p + point.len;
    Reader r = {p, end};
    size_t attrs_len = 0;
    while (r.p < end) {
        const uint8_t *start = r.p, *val = NULL;
        uint32_t field;
        int wt, rc;
        size_t len = 0;
        uint64_t num = 0;
        rc = next_field(&r, &field, &wt, &val, &len, &num);
        if (rc < 0) goto defer;
        if (rc == 0) break;
        if ((int)field != number || wt != 2) continue;
        if (count == cap) {
            StreamAttr *grown = PyMem_Malloc(sizeof(StreamAttr) * (size_t)cap * 2);
            if (grown == NULL) {
                PyErr_NoMemory();
                goto out;
            }
            memcpy(grown, attrs, sizeof(StreamAttr) * (size_t)count);
            if (attrs != small) PyMem_Free(attrs);
            attrs = grown;
            cap *= 2;
        }
        StreamAttr *a = &attrs[count];
        a->kv = val;
        a->kv_n = len;
        a->order = count;
        if (kv_sort_key(val, len, &a->key, &a->key_n) < 0) goto defer;
        count++;
        attrs_len += (size_t)(r.p - start);
        (void)start;
    }
    {
        /* the attribute field alone: each entry's tag, length and bytes, as they came (canonical) */
        PyObject *field_bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)attrs_len);
        if (field_bytes == NULL) goto out;
        char *w = PyBytes_AS_STRING(field_bytes);
        for (Py_ssize_t i = 0; i < count; i++) {
            /* re-encode tag and length: the same bytes a serializer writes */
            uint8_t head[20];
            size_t h = 0;
            uint64_t tag = ((uint64_t)number << 3) | 2, len = attrs[i].kv_n;
            do {
                head[h++] = (uint8_t)((tag & 0x7F) | (tag > 0x7F ? 0x80 : 0));
                tag >>= 7;
            } while (tag);
            do {
                head[h++] = (uint8_t)((len & 0x7F) | (len > 0x7F ? 0x80 : 0));
                len >>= 7;
            } while (len);
            memcpy(w, head, h);
            w += h;
            memcpy(w, attrs[i].kv, attrs[i].kv_n);
            w += attrs[i].kv_n;
        }
        if ((size_t)(w - PyBytes_AS_STRING(field_bytes)) != attrs_len) { /* not canonical: Python decides */
            Py_DECREF(field_bytes);
            goto defer;
        }
        qsort(attrs, (size_t)count, sizeof(StreamAttr), stream_attr_cmp);
        blake2b_state st = ((HasherObject *)hasher)->st;
        for (Py_ssize_t i = 0; i < count; i++) {
            uint8_t frame[8];
            uint64_t n = attrs[i].kv_n;
            for (int b = 0; b < 8; b++) frame[b] = (uint8_t)(n >> (8 * b));
            blake2b_update(&st, frame, 8);
            blake2b_update(&st, attrs[i].kv, attrs[i].kv_n);
        }
        uint8_t digest[64];
        blake2b_final(&st, digest);
        PyObject *key = PyBytes_FromStringAndSize(NULL, prefix.len + (Py_ssize_t)st.outlen);
        if (key == NULL) {
            Py_DECREF(field_bytes);
            goto out;
        }
        memcpy(PyBytes_AS_STRING(key), prefix.buf, (size_t)prefix.len);
        memcpy(PyBytes_AS_STRING(key) + prefix.len, digest, st.outlen);
        result = PyTuple_Pack(2, key, field_bytes);
        Py_DECREF(key);
        Py_DECREF(field_bytes);
        goto out;
    }
defer:
    Py_INCREF(Py_None);
    result = Py_None;
out:
    if (attrs != small) PyMem_Free(attrs);
    PyBuffer_Release(&point);
    PyBuffer_Release(&prefix);
    return result;
}

/* dedupe_keys(events, time_bytes, hash_bytes): codec.event_dedupe_keys in one call. Each event's
 * key: its time_ms (clamped to 0 .. 2^(8 time_bytes) - 1), big-endian in time_bytes, then the first
 * hash_bytes of BLAKE2b-128(b"E" + len(source) as 4 bytes big-endian + source + id), UTF-8. */
static PyObject *py_dedupe_keys(PyObject *module, PyObject *args) {
    PyObject *events;
    int time_bytes, hash_bytes;
    if (!PyArg_ParseTuple(args, "Oii", &events, &time_bytes, &hash_bytes)) return NULL;
    if (time_bytes < 1 || time_bytes > 7 || hash_bytes < 1 || hash_bytes > 16)
        return PyErr_Format(PyExc_ValueError, "time_bytes 1..7, hash_bytes 1..16");
    PyObject *seq = PySequence_Fast(events, "events must be a sequence");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    if (out == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    const long long top = (1LL << (8 * time_bytes)) - 1;
    blake2b_state empty;
    blake2b_init(&empty, 16, NULL);
    PyObject *last_source = NULL;
    blake2b_state with_source = empty;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *event = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(event) || PyTuple_GET_SIZE(event) != 4) {
            PyErr_SetString(PyExc_TypeError, "events must be EncodedEvents");
            goto fail;
        }
        PyObject *source = PyTuple_GET_ITEM(event, 0), *id = PyTuple_GET_ITEM(event, 1),
                 *time_ms = PyTuple_GET_ITEM(event, 3);
        /* Only types whose conversion runs no Python code: nothing can change `events` under us. */
        if (!PyUnicode_Check(source) || !PyUnicode_Check(id) || !PyLong_Check(time_ms)) {
            PyErr_SetString(PyExc_TypeError, "an event's source and id must be str, its time_ms an int");
            goto fail;
        }
        Py_ssize_t id_n;
        const char *id_s = PyUnicode_AsUTF8AndSize(id, &id_n);
        if (id_s == NULL) goto fail;
        if (source != last_source) { /* a request's events mostly share one source */
            Py_ssize_t src_n;
            const char *src_s = PyUnicode_AsUTF8AndSize(source, &src_n);
            if (src_s == NULL) goto fail;
            if ((uint64_t)src_n > 0xFFFFFFFFu) {
                PyErr_SetString(PyExc_OverflowError, "a source of 4 GiB or more");
                goto fail;
            }
            uint8_t head[5] = {'E', (uint8_t)(src_n >> 24), (uint8_t)(src_n >> 16), (uint8_t)(src_n >> 8), (uint8_t)src_n};
            with_source = empty;
            blake2b_update(&with_source, head, 5);
            blake2b_update(&with_source, (const uint8_t *)src_s, (size_t)src_n);
            last_source = source;
        }
        int overflow = 0;
        long long ms = PyLong_AsLongLongAndOverflow(time_ms, &overflow);
        if (ms == -1 && PyErr_Occurred()) goto fail;
        if (overflow > 0 || ms > top) ms = top;
        if (overflow < 0 || ms < 0) ms = 0;
        blake2b_state st = with_source;
        blake2b_update(&st, (const uint8_t *)id_s, (size_t)id_n);
        uint8_t key[23], digest[16];
        blake2b_final(&st, digest);
        for (int b = 0; b < time_bytes; b++) key[b] = (uint8_t)(ms >> (8 * (time_bytes - 1 - b)));
        memcpy(key + time_bytes, digest, (size_t)hash_bytes);
        PyObject *k = PyBytes_FromStringAndSize((const char *)key, time_bytes + hash_bytes);
        if (k == NULL) goto fail;
        PyList_SET_ITEM(out, i, k);
    }
    Py_DECREF(seq);
    return out;
fail:
    Py_DECREF(seq);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef module_methods[] = {
    {"dedupe_keys", py_dedupe_keys, METH_VARARGS, "codec.event_dedupe_keys, in C."},
    {"stream_key", py_stream_key, METH_VARARGS, "delta.point_attributes + delta.stream_key, in C."},
    {"setup", setup, METH_VARARGS, "Tell the module the point types and the Python helpers it defers to."},
    {"format_time", py_format_time, METH_O, "Unix ns -> events.format_time's text."},
    {"uuid8", py_uuid8, METH_O, "16 bytes -> ids.format_uuid8's text."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_native", "The rules engine's hot path in C (see native.py).", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&HasherType) < 0 || PyType_Ready(&ProgramType) < 0) return NULL;
    struct {
        PyObject **slot;
        const char *text;
    } names[] = {
        {&s_raw, "raw"},           {&s_raw_slot, "_raw"}, {&s_metric_key, "metric_key"},
        {&s_hasher_slot, "_hasher"}, {&s_source_slot, "_source"},           {&s_res, "res"},
        {&s_scope, "scope"},       {&s_attrs, "attrs"},
        {&s_values, "values"},     {&s_hasher, "hasher"},
        {&s_default_source, "default_source"}, {&s_metric, "metric"},
        {&s_metric_type, "metric_type"}, {&s_name, "name"},
        {&s_unit, "unit"},         {&s_point, "point"},
        {&s_received_ns, "received_ns"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].text);
        if (*names[i].slot == NULL) return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&HasherType);
    Py_INCREF(&ProgramType);
    /* What native.py expects: a module built from older sources (a stale in-tree build) is not used. */
    if (PyModule_AddIntConstant(m, "ABI", NATIVE_ABI) < 0 ||
        PyModule_AddObject(m, "Hasher", (PyObject *)&HasherType) < 0 ||
        PyModule_AddObject(m, "Program", (PyObject *)&ProgramType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
