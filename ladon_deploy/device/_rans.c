/*
 * ladon_deploy.device._rans: a native rANS coder, bit-exact with CompressAI's.
 *
 * What it reproduces: CompressAI 1.2.x `compressai.ans.RansEncoder.encode_with_indexes` and
 * `RansDecoder.decode_with_indexes` (compressai/cpp_exts/rans/rans_interface.cpp), which drive Fabian Giesen's
 * ryg_rans `rans64.h`: 64-bit state, normalisation interval [2**31, 2**63), 32-bit words, 16-bit CDF precision,
 * and CompressAI's escape ("bypass") code for values outside a CDF's range: the CDF's last interval flags an
 * escape, followed by the number of 4-bit nibbles and the nibbles (least significant first) of
 * raw = -2 * v - 1 (v < 0) or raw = 2 * (v - max_value) (v >= max_value). This is our own implementation of that
 * algorithm (C99, CPython C API, no C++ and no pybind11): it takes int32 buffers instead of Python lists, which is
 * where CompressAI's extension spends most of its time (converting lists of ints to std::vector).
 *
 * Differences from CompressAI, none of them on streams CompressAI itself writes:
 *  - every table, index and symbol is validated (CompressAI's asserts are compiled out); values CompressAI cannot
 *    code (an escape code of 2**28 or more, on which its encoder loops forever) raise ValueError;
 *  - the decoder never reads past the end of its input: a stream that runs out raises ValueError (CompressAI reads
 *    whatever memory follows), and an escape announcing more than 7 nibbles (which CompressAI's encoder can never
 *    write) raises ValueError. So decoding arbitrary bytes is memory-safe and takes O(symbols) time.
 *  - words are read and written little-endian whatever the host (CompressAI uses host order; every platform it
 *    runs on is little-endian);
 *  - any number of symbols can be coded (CompressAI's encoder overflows its output buffer below 4 symbols), and
 *    trailing bytes after a stream are ignored, as CompressAI ignores them (decode returns the bytes it consumed).
 *
 * The encoder divides by the symbol frequency with ryg_rans' exact fixed-point reciprocal (Rans64EncSymbolInit /
 * Rans64EncPutSymbol), which gives the same state as CompressAI's `x / freq`, `x % freq` for every x < 2**63. The
 * decoder finds the interval of a cumulative frequency through 256 buckets per CDF instead of CompressAI's linear
 * search (same interval: the CDFs are strictly increasing), and renormalises without branches.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(_MSC_VER) && defined(_M_X64)
#include <intrin.h>
#endif

#define PRECISION 16
#define PROB_SCALE (1u << PRECISION)                /* every CDF ends here */
#define STATE_LOW (UINT64_C(1) << 31)               /* RANS64_L: lower bound of the normalisation interval */
#define BYPASS_BITS 4
#define BYPASS_MAX ((1 << BYPASS_BITS) - 1)         /* 15: a nibble of 15 in the escape length means "more" */
#define MAX_ESCAPE_NIBBLES 7                        /* escape codes < 2**28: what CompressAI's encoder can write */
#define ESCAPE_LIMIT (INT64_C(1) << (BYPASS_BITS * MAX_ESCAPE_NIBBLES))
#define BUCKET_SHIFT 8                              /* decoder search: 256 buckets of 256 cumulative frequencies */
#define BUCKETS (PROB_SCALE >> BUCKET_SHIFT)
#define MAX_CHANNELS 4096                           /* these two bound the per-call tables built from the CDFs: */
#define MAX_TABLE_ENTRIES (1 << 20)                 /* 16 MiB of buckets, 24 MiB of encoder symbols at most */

/* ---------------------------------------------------------------------------------------------------------------
 * Buffers
 */

static int is_little_endian(void) {
    const uint16_t probe = 1;
    return *(const uint8_t *)&probe == 1;
}

/* Gets a C-contiguous buffer of int32 (format i or l, native, '=' or matching-endian '<'/'>'). */
static int get_int32_buffer(PyObject *object, Py_buffer *view, const char *name, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    const char *format;
    if (PyObject_GetBuffer(object, view, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s int32 buffer (e.g. a numpy int32 array), got %.100s",
                     name, writable ? " writable" : "", Py_TYPE(object)->tp_name);
        return -1;
    }
    format = view->format == NULL ? "B" : view->format;
    if (*format == '@' || *format == '=' || (*format == '<' && is_little_endian()) ||
        (*format == '>' && !is_little_endian()) || (*format == '!' && !is_little_endian())) {
        format++;
    }
    if (view->itemsize != 4 || (strcmp(format, "i") != 0 && strcmp(format, "l") != 0)) {
        PyErr_Format(PyExc_TypeError, "%s must hold native int32 values, got format '%s' with %zd-byte items", name,
                     view->format == NULL ? "B" : view->format, view->itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void store_le32(unsigned char *p, uint32_t value) {
    p[0] = (unsigned char)value;
    p[1] = (unsigned char)(value >> 8);
    p[2] = (unsigned char)(value >> 16);
    p[3] = (unsigned char)(value >> 24);
}

/* ---------------------------------------------------------------------------------------------------------------
 * Tables: validated private copies, so that the coding loops (which run without the GIL) see a consistent
 * snapshot even if another thread changes the caller's arrays meanwhile.
 */

typedef struct {
    uint64_t reciprocal; /* ceil(2**(63 + shift) / freq), or ~0 for freq 1 */
    uint32_t freq;
    uint32_t bias;       /* start, or start + 2**16 - 1 for freq 1 */
    uint32_t complement; /* 2**16 - freq */
    uint32_t shift;      /* ceil(log2(freq)) - 1, or 0 for freq 1 */
} EncodeSymbol;

/* The decoder's search for the interval s with row[s] <= cum < row[s + 1], by buckets of 256 cum values. A bucket
 * that holds at most one interval boundary answers without a search and without a branch: s = base + (cum >= the
 * start packed in `high`), and (start, freq) is `high` or `low` accordingly, each packed as start | freq << 16. A
 * bucket inside one interval s has low == high == s's and base = s - 1 (cum >= start always holds). A bucket
 * holding more boundaries (two or more intervals narrower than 256, i.e. tail symbols) sets `search`: look from
 * interval base on. */
typedef struct {
    uint32_t low;
    uint32_t high;
    int32_t base;
    uint32_t search;
} Bucket;

/* A channel's most probable interval, when it is probable enough (at least DOMINANT_MIN_FREQ of 2**16) that
 * testing it first pays: the test needs no table load, so a correctly predicted hit takes the load off the
 * state's dependency chain; a miss falls through to the buckets. freq == 0 disables it (the test never holds). */
typedef struct {
    uint32_t start;
    uint32_t freq;
    int32_t s;
    uint32_t unused;
} Dominant;

#define DOMINANT_MIN_FREQ 57344u /* 7/8: above the hit rate at which a mispredicted branch costs more than it saves */

typedef struct {
    Py_ssize_t channels;
    Py_ssize_t lmax;
    int32_t *cdf;          /* channels x lmax, copied */
    int32_t *max_value;    /* cdf_length - 2: the escape interval of each channel */
    int64_t *offset;
    EncodeSymbol *encode;  /* channels x lmax (encoder only) */
    Bucket *bucket;        /* channels x BUCKETS (decoder only), for cum >> BUCKET_SHIFT */
    Dominant *dominant;    /* channels (decoder only) */
} Tables;

static void tables_free(Tables *tables) {
    free(tables->cdf);
    free(tables->max_value);
    free(tables->offset);
    free(tables->encode);
    free(tables->bucket);
    free(tables->dominant);
    memset(tables, 0, sizeof(*tables));
}

/* start < 2**16 and freq < 2**16: every row has at least 2 intervals */
static uint32_t pack_interval(const int32_t *row, int32_t s) {
    return (uint32_t)row[s] | ((uint32_t)(row[s + 1] - row[s]) << 16);
}

static void encode_symbol_init(EncodeSymbol *symbol, uint32_t start, uint32_t freq) {
    /* ryg_rans Rans64EncSymbolInit with scale_bits = 16 */
    symbol->freq = freq;
    symbol->complement = PROB_SCALE - freq;
    if (freq < 2) {
        symbol->reciprocal = ~UINT64_C(0);
        symbol->shift = 0;
        symbol->bias = start + PROB_SCALE - 1;
    } else {
        uint32_t shift = 0;
        uint64_t high, low;
        while (freq > (UINT32_C(1) << shift)) {
            shift++;
        }
        /* ceil(2**(63 + shift) / freq) in two 32-bit halves */
        high = (UINT64_C(1) << (shift + 31)) / freq;
        low = ((uint64_t)(freq - 1) + (((UINT64_C(1) << (shift + 31)) % freq) << 32)) / freq;
        symbol->reciprocal = low + (high << 32);
        symbol->shift = shift - 1;
        symbol->bias = start;
    }
}

/* Reads cdfs (C x Lmax, or C*Lmax flat), cdf_lengths and offsets; validates them as CompressAI's (debug-only)
 * asserts would: each row starts at 0, ends at 2**16 at cdf_length - 1, strictly increasing, cdf_length in
 * [3, Lmax]. Then builds the encoder's or the decoder's lookup tables. */
static int tables_load(Tables *tables, PyObject *cdfs_obj, PyObject *lengths_obj, PyObject *offsets_obj,
                       int for_encoder) {
    Py_buffer cdfs, lengths, offsets;
    Py_ssize_t channels, lmax, c, j;
    const int32_t *cdf_in, *length_in, *offset_in;
    int status = -1;

    memset(tables, 0, sizeof(*tables));
    if (get_int32_buffer(cdfs_obj, &cdfs, "cdfs", 0) < 0) {
        return -1;
    }
    if (get_int32_buffer(lengths_obj, &lengths, "cdf_lengths", 0) < 0) {
        PyBuffer_Release(&cdfs);
        return -1;
    }
    if (get_int32_buffer(offsets_obj, &offsets, "offsets", 0) < 0) {
        PyBuffer_Release(&cdfs);
        PyBuffer_Release(&lengths);
        return -1;
    }
    channels = lengths.len / 4;
    if (channels < 1 || channels > MAX_CHANNELS) {
        PyErr_Format(PyExc_ValueError, "cdf_lengths has %zd entries, expected 1 to %d", channels, MAX_CHANNELS);
        goto done;
    }
    if (offsets.len / 4 != channels) {
        PyErr_Format(PyExc_ValueError, "offsets has %zd entries, cdf_lengths has %zd", offsets.len / 4, channels);
        goto done;
    }
    if (cdfs.ndim == 2 && cdfs.shape != NULL) {
        if (cdfs.shape[0] != channels) {
            PyErr_Format(PyExc_ValueError, "cdfs has %zd rows, cdf_lengths has %zd entries", cdfs.shape[0],
                         channels);
            goto done;
        }
        lmax = cdfs.shape[1];
    } else if (cdfs.ndim <= 1) {
        if ((cdfs.len / 4) % channels != 0) {
            PyErr_Format(PyExc_ValueError, "flat cdfs has %zd values, not a multiple of its %zd channels",
                         cdfs.len / 4, channels);
            goto done;
        }
        lmax = (cdfs.len / 4) / channels;
    } else {
        PyErr_Format(PyExc_ValueError, "cdfs must be 2-D (channels, Lmax), got %d dimensions", cdfs.ndim);
        goto done;
    }
    if (lmax < 3 || lmax > (Py_ssize_t)PROB_SCALE + 1 || lmax > MAX_TABLE_ENTRIES / channels) {
        PyErr_Format(PyExc_ValueError, "cdfs of %zd x %zd: Lmax must be in [3, %u] and channels x Lmax at most %d",
                     channels, lmax, PROB_SCALE + 1, MAX_TABLE_ENTRIES);
        goto done;
    }
    cdf_in = (const int32_t *)cdfs.buf;
    length_in = (const int32_t *)lengths.buf;
    offset_in = (const int32_t *)offsets.buf;

    tables->channels = channels;
    tables->lmax = lmax;
    tables->cdf = (int32_t *)malloc((size_t)(channels * lmax) * sizeof(int32_t));
    tables->max_value = (int32_t *)malloc((size_t)channels * sizeof(int32_t));
    tables->offset = (int64_t *)malloc((size_t)channels * sizeof(int64_t));
    if (tables->cdf == NULL || tables->max_value == NULL || tables->offset == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(tables->cdf, cdf_in, (size_t)(channels * lmax) * sizeof(int32_t));
    for (c = 0; c < channels; c++) {
        const int32_t length = length_in[c];
        const int32_t *row = tables->cdf + c * lmax;
        if (length < 3 || length > lmax) {
            PyErr_Format(PyExc_ValueError, "cdf_lengths[%zd] = %d is outside [3, %zd]", c, (int)length, lmax);
            goto done;
        }
        if (row[0] != 0 || row[length - 1] != (int32_t)PROB_SCALE) {
            PyErr_Format(PyExc_ValueError, "cdfs row %zd must start at 0 and end at %u (at cdf_lengths - 1)", c,
                         PROB_SCALE);
            goto done;
        }
        for (j = 1; j < length; j++) {
            if (row[j] <= row[j - 1]) {
                PyErr_Format(PyExc_ValueError, "cdfs row %zd is not strictly increasing at %zd", c, j);
                goto done;
            }
        }
        tables->max_value[c] = length - 2;
        tables->offset[c] = offset_in[c];
    }
    if (for_encoder) {
        tables->encode = (EncodeSymbol *)malloc((size_t)(channels * lmax) * sizeof(EncodeSymbol));
        if (tables->encode == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (c = 0; c < channels; c++) {
            const int32_t *row = tables->cdf + c * lmax;
            for (j = 0; j <= tables->max_value[c]; j++) {
                encode_symbol_init(&tables->encode[c * lmax + j], (uint32_t)row[j], (uint32_t)(row[j + 1] - row[j]));
            }
        }
    } else {
        tables->bucket = (Bucket *)malloc((size_t)channels * BUCKETS * sizeof(Bucket));
        tables->dominant = (Dominant *)calloc((size_t)channels, sizeof(Dominant));
        if (tables->bucket == NULL || tables->dominant == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        for (c = 0; c < channels; c++) {
            const int32_t *row = tables->cdf + c * lmax;
            int32_t s = 0;
            uint32_t b;
            /* the escape interval (max_value) is never a dominant one: its symbol needs the escape path */
            for (j = 0; j < tables->max_value[c]; j++) {
                const uint32_t freq = (uint32_t)(row[j + 1] - row[j]);
                if (freq >= DOMINANT_MIN_FREQ) {
                    tables->dominant[c].start = (uint32_t)row[j];
                    tables->dominant[c].freq = freq;
                    tables->dominant[c].s = (int32_t)j;
                }
            }
            for (b = 0; b < BUCKETS; b++) {
                Bucket *bucket = &tables->bucket[c * BUCKETS + b];
                const uint32_t end = (b + 1) << BUCKET_SHIFT; /* the bucket is [b << BUCKET_SHIFT, end) */
                /* s: the interval holding the bucket's first cum value */
                while (s < tables->max_value[c] && (uint32_t)row[s + 1] <= (b << BUCKET_SHIFT)) {
                    s++;
                }
                bucket->low = pack_interval(row, s);
                bucket->search = 0;
                if ((uint32_t)row[s + 1] >= end) {
                    bucket->high = bucket->low;
                    bucket->base = s - 1;
                } else if ((uint32_t)row[s + 2] >= end) { /* row[s + 1] < 2**16: s + 1 is a valid interval */
                    bucket->high = pack_interval(row, s + 1);
                    bucket->base = s;
                } else {
                    bucket->high = bucket->low;
                    bucket->base = s;
                    bucket->search = 1;
                }
            }
        }
    }
    status = 0;
done:
    PyBuffer_Release(&cdfs);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&offsets);
    if (status < 0) {
        tables_free(tables);
    }
    return status;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Encoder
 */

static uint64_t mul_high64(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 uint128;
    return (uint64_t)(((uint128)a * b) >> 64);
#elif defined(_MSC_VER) && defined(_M_X64)
    return __umulh(a, b);
#else
    const uint64_t a_lo = (uint32_t)a, a_hi = a >> 32, b_lo = (uint32_t)b, b_hi = b >> 32;
    const uint64_t lo_lo = a_lo * b_lo, hi_lo = a_hi * b_lo, lo_hi = a_lo * b_hi, hi_hi = a_hi * b_hi;
    const uint64_t cross = (lo_lo >> 32) + (uint32_t)hi_lo + lo_hi;
    return hi_hi + (hi_lo >> 32) + (cross >> 32);
#endif
}

enum { CODE_OK = 0, CODE_INDEX, CODE_RANGE, CODE_NO_MEMORY, CODE_EOF, CODE_ESCAPE, CODE_VALUE };

/* The most puts (so words) one symbol takes: its interval, the nibble count and up to 7 nibbles. */
#define MAX_PUTS_PER_SYMBOL (2 + MAX_ESCAPE_NIBBLES)

typedef struct {
    uint64_t state;
    unsigned char *begin; /* words are written backwards, from end towards begin */
    unsigned char *ptr;
    unsigned char *end;
} Encoder;

/* Makes room for `words` more words before ptr, growing (doubling) the buffer and moving what is written. */
static int encoder_reserve(Encoder *enc, size_t words) {
    size_t used, capacity, wanted;
    unsigned char *grown;
    if ((size_t)(enc->ptr - enc->begin) >= words * 4) {
        return CODE_OK;
    }
    used = (size_t)(enc->end - enc->ptr);
    capacity = (size_t)(enc->end - enc->begin);
    wanted = used + words * 4;
    if (capacity > ((size_t)PY_SSIZE_T_MAX) / 2 || wanted > (size_t)PY_SSIZE_T_MAX) {
        return CODE_NO_MEMORY;
    }
    capacity = 2 * capacity > wanted ? 2 * capacity : wanted;
    grown = (unsigned char *)malloc(capacity);
    if (grown == NULL) {
        return CODE_NO_MEMORY;
    }
    memcpy(grown + capacity - used, enc->ptr, used);
    free(enc->begin);
    enc->begin = grown;
    enc->end = grown + capacity;
    enc->ptr = enc->end - used;
    return CODE_OK;
}

/* Renormalisation shared by both puts: if x >= x_max, write its low word and keep the high one. Branch-free (the
 * branch is unpredictable); the store always happens, which encoder_reserve has made room for. */
static uint64_t encoder_renormalize(Encoder *enc, uint64_t x, uint64_t x_max) {
    const int emit = x >= x_max;
    store_le32(enc->ptr - 4, (uint32_t)x);
    enc->ptr -= emit ? 4 : 0;
    return emit ? x >> 32 : x;
}

/* ryg_rans Rans64EncPutSymbol (the same state as Rans64EncPut with start, freq), 16-bit precision */
static void encoder_put(Encoder *enc, const EncodeSymbol *symbol) {
    const uint64_t x = encoder_renormalize(enc, enc->state, ((STATE_LOW >> PRECISION) << 32) * symbol->freq);
    enc->state = x + symbol->bias + (mul_high64(x, symbol->reciprocal) >> symbol->shift) * symbol->complement;
}

/* CompressAI's Rans64EncPutBits: 4 raw bits, i.e. probability 2**-4 */
static void encoder_put_bits(Encoder *enc, uint32_t value) {
    const uint64_t x = encoder_renormalize(enc, enc->state, ((STATE_LOW >> PRECISION) << 32)
                                                                 << (PRECISION - BYPASS_BITS));
    enc->state = (x << BYPASS_BITS) | value;
}

/* The escape code of a value v = symbol - offset outside [0, max_value), or -1 when it is inside. */
static int64_t escape_code(int64_t value, int32_t max_value) {
    if (value < 0) {
        return -2 * value - 1;
    }
    if (value >= max_value) {
        return 2 * (value - max_value);
    }
    return -1;
}

static int nibble_count(int64_t raw) {
    int count = 0;
    while ((raw >> (count * BYPASS_BITS)) != 0) {
        count++;
    }
    return count;
}

typedef struct {
    int code;
    Py_ssize_t position;
    int64_t detail;
} Failure;

/* The symbols backwards, each as CompressAI's BufferedRansEncoder flushes it: its raw nibbles (most significant
 * first), the nibble count, then the CDF interval (the escape interval for an escaped value). Then the final state
 * (Rans64EncFlush). */
static int encode_loop(Encoder *enc, const int32_t *symbols, const int32_t *indexes, Py_ssize_t count,
                       const Tables *tables, Failure *failure) {
    Py_ssize_t i;
    int code;
    for (i = count - 1; i >= 0; i--) {
        const int32_t index = indexes[i];
        int32_t max_value;
        int64_t value, raw;
        if (index < 0 || index >= tables->channels) {
            failure->code = CODE_INDEX;
            failure->position = i;
            failure->detail = index;
            return -1;
        }
        if ((code = encoder_reserve(enc, MAX_PUTS_PER_SYMBOL)) != CODE_OK) {
            failure->code = code;
            failure->position = i;
            return -1;
        }
        max_value = tables->max_value[index];
        value = (int64_t)symbols[i] - tables->offset[index];
        raw = escape_code(value, max_value);
        if (raw >= 0) {
            int nibbles, j;
            if (raw >= ESCAPE_LIMIT) {
                failure->code = CODE_RANGE;
                failure->position = i;
                failure->detail = symbols[i];
                return -1;
            }
            nibbles = nibble_count(raw);
            for (j = nibbles - 1; j >= 0; j--) {
                encoder_put_bits(enc, (uint32_t)(raw >> (j * BYPASS_BITS)) & BYPASS_MAX);
            }
            /* nibbles <= 7 < 15: the count is a single nibble (CompressAI adds 15s before it for counts >= 15) */
            encoder_put_bits(enc, (uint32_t)nibbles);
            value = max_value;
        }
        encoder_put(enc, &tables->encode[(Py_ssize_t)index * tables->lmax + (Py_ssize_t)value]);
    }
    if ((code = encoder_reserve(enc, 2)) != CODE_OK) {
        failure->code = code;
        failure->position = 0;
        return -1;
    }
    enc->ptr -= 8;
    store_le32(enc->ptr, (uint32_t)enc->state);
    store_le32(enc->ptr + 4, (uint32_t)(enc->state >> 32));
    return 0;
}

static void raise_failure(const Failure *failure, const Tables *tables) {
    switch (failure->code) {
    case CODE_INDEX:
        PyErr_Format(PyExc_ValueError, "indexes[%zd] = %lld is outside [0, %zd)", failure->position,
                     (long long)failure->detail, tables->channels);
        break;
    case CODE_RANGE:
        PyErr_Format(PyExc_ValueError,
                     "symbols[%zd] = %lld is too far outside its CDF: escape codes must stay below 2**28 "
                     "(CompressAI's encoder loops forever from there)",
                     failure->position, (long long)failure->detail);
        break;
    case CODE_NO_MEMORY:
        PyErr_NoMemory();
        break;
    case CODE_EOF:
        PyErr_Format(PyExc_ValueError, "rANS stream ends early: symbol %zd needs more words than the %lld bytes given",
                     failure->position, (long long)failure->detail);
        break;
    case CODE_ESCAPE:
        PyErr_Format(PyExc_ValueError, "rANS stream is invalid: symbol %zd escapes with %lld nibbles, more than %d",
                     failure->position, (long long)failure->detail, MAX_ESCAPE_NIBBLES);
        break;
    case CODE_VALUE:
        PyErr_Format(PyExc_ValueError, "rANS stream is invalid: symbol %zd decodes to %lld, outside int32",
                     failure->position, (long long)failure->detail);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "rANS coder failed for an unknown reason");
    }
}

static PyObject *rans_encode(PyObject *self, PyObject *args) {
    PyObject *symbols_obj, *indexes_obj, *cdfs_obj, *lengths_obj, *offsets_obj;
    Py_buffer symbols, indexes;
    Tables tables;
    Failure failure = {CODE_OK, 0, 0};
    PyObject *result = NULL;
    Py_ssize_t count;
    size_t capacity;
    Encoder enc;
    int status;
    (void)self;

    if (!PyArg_ParseTuple(args, "OOOOO:encode", &symbols_obj, &indexes_obj, &cdfs_obj, &lengths_obj, &offsets_obj)) {
        return NULL;
    }
    if (get_int32_buffer(symbols_obj, &symbols, "symbols", 0) < 0) {
        return NULL;
    }
    if (get_int32_buffer(indexes_obj, &indexes, "indexes", 0) < 0) {
        PyBuffer_Release(&symbols);
        return NULL;
    }
    if (symbols.len != indexes.len) {
        PyErr_Format(PyExc_ValueError, "symbols has %zd values, indexes has %zd", symbols.len / 4, indexes.len / 4);
        goto release_buffers;
    }
    if (tables_load(&tables, cdfs_obj, lengths_obj, offsets_obj, 1) < 0) {
        goto release_buffers;
    }
    count = symbols.len / 4;

    Py_BEGIN_ALLOW_THREADS
    /* Rans64EncInit. A first guess of one byte a symbol (typical latents take well under); grown as needed. */
    enc.state = STATE_LOW;
    capacity = (size_t)count + 64;
    enc.begin = (unsigned char *)malloc(capacity);
    enc.end = enc.begin == NULL ? NULL : enc.begin + capacity;
    enc.ptr = enc.end;
    if (enc.begin == NULL) {
        failure.code = CODE_NO_MEMORY;
        status = -1;
    } else {
        status = encode_loop(&enc, (const int32_t *)symbols.buf, (const int32_t *)indexes.buf, count, &tables,
                             &failure);
    }
    Py_END_ALLOW_THREADS

    if (status < 0) {
        raise_failure(&failure, &tables);
    } else {
        result = PyBytes_FromStringAndSize((const char *)enc.ptr, (Py_ssize_t)(enc.end - enc.ptr));
    }
    free(enc.begin);
    tables_free(&tables);
release_buffers:
    PyBuffer_Release(&symbols);
    PyBuffer_Release(&indexes);
    return result;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Decoder
 */

typedef struct {
    uint64_t state;
    const unsigned char *data;
    Py_ssize_t words; /* whole 32-bit words in the stream, at least 2 */
    Py_ssize_t next;  /* the next word to read; next > words means the stream ran out */
} Decoder;

/* Renormalisation: if x < 2**31, x = (x << 32) | next word. Branch-free (the branch is unpredictable): the word at
 * min(next, words - 1) is always loaded, so nothing outside the stream is ever read, and used only when needed.
 * Running out shows as next > words, which the decode loop checks after every symbol. */
static uint64_t decoder_renormalize(Decoder *dec, uint64_t x) {
    const int need = x < STATE_LOW;
    const Py_ssize_t at = dec->next < dec->words ? dec->next : dec->words - 1;
    const uint64_t refilled = (x << 32) | load_le32(dec->data + 4 * at);
    dec->next += need;
    return need ? refilled : x;
}

/* CompressAI's Rans64DecGetBits with nbits = 4 */
static uint32_t decoder_get_bits(Decoder *dec) {
    const uint32_t value = (uint32_t)(dec->state & BYPASS_MAX);
    dec->state = decoder_renormalize(dec, dec->state >> BYPASS_BITS);
    return value;
}

static int decode_loop(Decoder *dec, const int32_t *indexes, int32_t *out, Py_ssize_t count, const Tables *tables,
                       Failure *failure) {
    Py_ssize_t i;
    for (i = 0; i < count; i++) {
        const int32_t index = indexes[i];
        uint32_t cum, start, freq;
        const Bucket *bucket;
        const Dominant *dominant;
        int32_t s, max_value;
        int64_t value;
        if (index < 0 || index >= tables->channels) {
            failure->code = CODE_INDEX;
            failure->detail = index;
            goto fail;
        }
        max_value = tables->max_value[index];
        /* Rans64DecGet, then CompressAI's search for the interval s with row[s] <= cum < row[s + 1]: the bucket
         * gives it, or where to start looking; the search stops at s <= max_value because
         * row[max_value + 1] == 2**16 > cum */
        cum = (uint32_t)(dec->state & (PROB_SCALE - 1));
        dominant = &tables->dominant[index];
        bucket = &tables->bucket[(Py_ssize_t)index * BUCKETS + (Py_ssize_t)(cum >> BUCKET_SHIFT)];
        if (cum - dominant->start < dominant->freq) { /* unsigned: start <= cum < start + freq */
            s = dominant->s;
            start = dominant->start;
            freq = dominant->freq;
        } else if (!bucket->search) {
            const uint32_t take = cum >= (bucket->high & 0xFFFF);
            const uint32_t packed = take ? bucket->high : bucket->low;
            s = bucket->base + (int32_t)take;
            start = packed & 0xFFFF;
            freq = packed >> 16;
        } else {
            const int32_t *row = tables->cdf + (Py_ssize_t)index * tables->lmax;
            s = bucket->base;
            while ((uint32_t)row[s + 1] <= cum) {
                s++;
            }
            start = (uint32_t)row[s];
            freq = (uint32_t)(row[s + 1] - row[s]);
        }
        /* Rans64DecAdvance */
        dec->state = decoder_renormalize(dec, (uint64_t)freq * (dec->state >> PRECISION) + cum - start);
        value = s;
        if (s == max_value) {
            /* escape: the nibble count (a 15 adds the next nibble too), then the nibbles, least significant first */
            int64_t nibbles = 0, raw = 0, j;
            uint32_t nibble;
            do {
                nibble = decoder_get_bits(dec);
                nibbles += nibble;
                if (nibbles > MAX_ESCAPE_NIBBLES) {
                    failure->code = dec->next > dec->words ? CODE_EOF : CODE_ESCAPE;
                    failure->detail = dec->next > dec->words ? 4 * dec->words : nibbles;
                    goto fail;
                }
            } while (nibble == BYPASS_MAX);
            for (j = 0; j < nibbles; j++) {
                raw |= (int64_t)decoder_get_bits(dec) << (j * BYPASS_BITS);
            }
            value = raw >> 1;
            if (raw & 1) {
                value = -value - 1;
            } else {
                value += max_value;
            }
        }
        if (dec->next > dec->words) {
            failure->code = CODE_EOF;
            failure->detail = 4 * dec->words;
            goto fail;
        }
        value += tables->offset[index];
        if (value < INT32_MIN || value > INT32_MAX) {
            failure->code = CODE_VALUE;
            failure->detail = value;
            goto fail;
        }
        out[i] = (int32_t)value;
    }
    return 0;
fail:
    failure->position = i;
    return -1;
}

static PyObject *rans_decode(PyObject *self, PyObject *args) {
    PyObject *indexes_obj, *cdfs_obj, *lengths_obj, *offsets_obj, *out_obj;
    Py_buffer data, indexes, out;
    Tables tables;
    Failure failure = {CODE_OK, 0, 0};
    Decoder dec;
    Py_ssize_t count;
    int status;
    PyObject *result = NULL;
    (void)self;

    if (!PyArg_ParseTuple(args, "y*OOOOO:decode", &data, &indexes_obj, &cdfs_obj, &lengths_obj, &offsets_obj,
                          &out_obj)) {
        return NULL;
    }
    if (get_int32_buffer(indexes_obj, &indexes, "indexes", 0) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (get_int32_buffer(out_obj, &out, "out", 1) < 0) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&indexes);
        return NULL;
    }
    if (out.len != indexes.len) {
        PyErr_Format(PyExc_ValueError, "out has %zd values, indexes has %zd", out.len / 4, indexes.len / 4);
        goto release_buffers;
    }
    if (data.len < 8 || data.len % 4 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "rANS stream has %zd bytes: expected whole 32-bit words and at least the 8-byte state",
                     data.len);
        goto release_buffers;
    }
    if (tables_load(&tables, cdfs_obj, lengths_obj, offsets_obj, 0) < 0) {
        goto release_buffers;
    }
    count = indexes.len / 4;

    Py_BEGIN_ALLOW_THREADS
    /* Rans64DecInit: the state from the first two words, low word first */
    dec.data = (const unsigned char *)data.buf;
    dec.words = data.len / 4;
    dec.state = (uint64_t)load_le32(dec.data) | ((uint64_t)load_le32(dec.data + 4) << 32);
    dec.next = 2;
    status = decode_loop(&dec, (const int32_t *)indexes.buf, (int32_t *)out.buf, count, &tables, &failure);
    Py_END_ALLOW_THREADS

    if (status < 0) {
        raise_failure(&failure, &tables);
    } else {
        result = PyLong_FromSsize_t(4 * dec.next);
    }
    tables_free(&tables);
release_buffers:
    PyBuffer_Release(&data);
    PyBuffer_Release(&indexes);
    PyBuffer_Release(&out);
    return result;
}

/* ---------------------------------------------------------------------------------------------------------------
 * Module
 */

PyDoc_STRVAR(encode_doc,
"encode(symbols, indexes, cdfs, cdf_lengths, offsets) -> bytes\n\n"
"rANS-codes symbols[i] with CDF row indexes[i]; byte-identical to CompressAI's\n"
"RansEncoder().encode_with_indexes on the same values. All arguments are C-contiguous int32\n"
"buffers: symbols and indexes of length N, cdfs (C, Lmax) (or flat C*Lmax), cdf_lengths and\n"
"offsets of length C. Raises ValueError for invalid tables, indexes or unencodable symbols.");

PyDoc_STRVAR(decode_doc,
"decode(data, indexes, cdfs, cdf_lengths, offsets, out) -> int\n\n"
"Decodes len(indexes) symbols of a CompressAI rANS stream into the writable int32 buffer out\n"
"and returns the number of stream bytes consumed (trailing bytes are ignored, as CompressAI\n"
"does). Never reads outside data: a stream that is too short or invalid raises ValueError.");

static PyMethodDef rans_methods[] = {
    {"encode", (PyCFunction)rans_encode, METH_VARARGS, encode_doc},
    {"decode", (PyCFunction)rans_decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rans_module = {
    PyModuleDef_HEAD_INIT,
    "ladon_deploy.device._rans",
    "Native rANS coder, bit-exact with CompressAI's (ryg_rans 64-bit, 16-bit precision, escapes).",
    -1,
    rans_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__rans(void) {
    PyObject *module = PyModule_Create(&rans_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "PRECISION", PRECISION) < 0 ||
        PyModule_AddIntConstant(module, "MAX_ESCAPE_NIBBLES", MAX_ESCAPE_NIBBLES) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
