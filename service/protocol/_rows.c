/*
 * The v1 request body in one pass: {"instances": [[number, ...], ...]} -> ndarray.
 *
 *   v1_rows(body: bytes[, float32: bool]) -> ndarray (n, features) or None
 *
 * The common v1 request is a JSON object whose only key is "instances", a non-empty
 * list of equally long, non-empty lists of JSON numbers. For exactly that, this returns
 * what the general path (orjson, then numpy: service/protocol/v1.py) returns: int64
 * when every number is an integer, else float64, each value the one Python's float()
 * or int() gives; with float32, that array cast to float32 as numpy's astype casts it
 * (for a float32 model, whose validation then has nothing to cast). For anything else (another key, a string, a boolean, a null, a
 * nested or ragged or empty row, an integer of more than 15 digits, a number beyond
 * float64, malformed JSON) it returns None and the general path decodes the body and
 * words the error: this code never refuses a request itself.
 *
 * Why: orjson builds a Python float per value and numpy reads them back, about 50 us
 * for a 784-value row in a loaded server (bench/micro-timings.md); the numbers parsed
 * straight into the array cost a fraction. Values are parsed on tokens this file has
 * checked against JSON's number grammar first: by Clinger's exact fast path where it
 * applies (up to 15-16 significant digits and powers of ten within +-22: what clients
 * send), else by PyOS_string_to_double (CPython's correctly rounded strtod,
 * locale-free). Both give the double nearest the decimal, as Python's float() does.
 *
 * Built as an optional extension (setup.py): without it the general path runs alone.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <math.h>
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <string.h>

/* Integers with more digits may not convert exactly to float64 beside fractions (2^53
   has 16 digits): the general path then decides. */
#define MAX_INTEGER_DIGITS 15
/* Significant digits the fast path keeps in a uint64 (10^19 < 2^64). */
#define MAX_MANTISSA_DIGITS 19
#define MAX_EXACT_MANTISSA (UINT64_C(1) << 53)

/* Powers of ten that float64 holds exactly. */
static const double EXACT_POWERS_OF_TEN[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The values parsed so far: a stack buffer, then the heap for large batches. */
typedef struct {
    double *data;
    npy_intp size, capacity;
    double stack[1024];
} Values;

static int push(Values *values, double value) {
    if (values->size == values->capacity) {
        const npy_intp capacity = values->capacity * 2;
        double *grown = values->data == values->stack
                            ? PyMem_Malloc((size_t)capacity * sizeof(double))
                            : PyMem_Realloc(values->data, (size_t)capacity * sizeof(double));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (values->data == values->stack) memcpy(grown, values->stack, sizeof values->stack);
        values->data = grown;
        values->capacity = capacity;
    }
    values->data[values->size++] = value;
    return 0;
}

/* The JSON number token at p: its end, its value in *value, and in *integer whether it
   has neither fraction nor exponent. NULL when there is no JSON number at p, or one
   left to the general path (an integer of more than 15 digits, a value beyond float64;
   an exception is then set only for a failed allocation).

   The value is Python's float() of the token. Clinger's fast path where it applies:
   when the token's significant digits, read as an integer w, are at most 2^53 and its
   power of ten p is within +-22, both are exact doubles and w * 10^p (or w / 10^-p) is
   one IEEE operation, correctly rounded. Otherwise CPython's correctly rounded strtod
   (PyOS_string_to_double), which stops at the token's end: the body is a bytes
   object, NUL-terminated. */
static const char *parse_number(const char *p, const char *end, double *value, int *integer) {
    const char *start = p;
    const int negative = p < end && *p == '-';
    if (negative) p++;
    const char *whole = p;
    uint64_t mantissa = 0;
    int significant = 0, exponent = 0, exact = 1;
    if (p < end && *p == '0') {
        p++;
    } else if (p < end && *p >= '1' && *p <= '9') {
        for (; p < end && is_digit(*p); p++) {
            if (significant < MAX_MANTISSA_DIGITS) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                significant++;
            } else {
                exact = 0;
            }
        }
    } else {
        return NULL;
    }
    const npy_intp whole_digits = p - whole;
    *integer = 1;
    if (p < end && *p == '.') {
        p++;
        if (!(p < end && is_digit(*p))) return NULL;
        for (; p < end && is_digit(*p); p++) {
            if (significant < MAX_MANTISSA_DIGITS) {
                mantissa = mantissa * 10 + (uint64_t)(*p - '0');
                exponent--;
                if (mantissa) significant++; /* leading zeros of 0.00x are not */
            } else {
                exact = 0;
            }
        }
        *integer = 0;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        const int exponent_negative = p < end && *p == '-';
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (!(p < end && is_digit(*p))) return NULL;
        int written = 0;
        for (; p < end && is_digit(*p); p++) {
            if (written < 100000) written = written * 10 + (*p - '0');
        }
        exponent += exponent_negative ? -written : written;
        *integer = 0;
    }
    if (*integer) {
        if (whole_digits > MAX_INTEGER_DIGITS) return NULL;
        /* An integer, as numpy converts Python's int: "-0" is 0, not -0.0. */
        *value = (double)(negative ? -(int64_t)mantissa : (int64_t)mantissa);
        return p;
    }
    if (exact && (mantissa == 0 || (mantissa <= MAX_EXACT_MANTISSA && exponent >= -22 &&
                                    exponent <= 22))) {
        const double magnitude = mantissa == 0 ? 0.0
                                 : exponent < 0
                                     ? (double)mantissa / EXACT_POWERS_OF_TEN[-exponent]
                                     : (double)mantissa * EXACT_POWERS_OF_TEN[exponent];
        *value = negative ? -magnitude : magnitude;
        return p;
    }
    char *parsed_end;
    const double parsed = PyOS_string_to_double(start, &parsed_end, NULL);
    if (parsed == -1.0 && PyErr_Occurred()) return NULL;
    if (parsed_end != p || !isfinite(parsed)) return NULL; /* beyond float64: orjson refuses */
    *value = parsed;
    return p;
}

/* Parses the body if it has the simple form: its rows' values into *values, their
   count and width into *n and *width. Returns 0 when the body is not the simple form
   (or an exception is set). */
static int parse_rows(const char *p, const char *end, Values *values, npy_intp *n,
                      npy_intp *width, int *all_integers) {
    static const char key[] = "\"instances\"";
    const size_t key_length = sizeof key - 1;
    p = skip_ws(p, end);
    if (p == end || *p++ != '{') return 0;
    p = skip_ws(p, end);
    if ((size_t)(end - p) < key_length || memcmp(p, key, key_length) != 0) return 0;
    p = skip_ws(p + key_length, end);
    if (p == end || *p++ != ':') return 0;
    p = skip_ws(p, end);
    if (p == end || *p++ != '[') return 0;
    p = skip_ws(p, end);
    *n = 0;
    *width = -1;
    *all_integers = 1;
    for (;;) {
        if (p == end || *p++ != '[') return 0;
        npy_intp count = 0;
        for (;;) {
            p = skip_ws(p, end);
            double value;
            int integer;
            p = parse_number(p, end, &value, &integer);
            if (p == NULL || push(values, value) < 0) return 0;
            *all_integers &= integer;
            count++;
            p = skip_ws(p, end);
            if (p == end) return 0;
            if (*p == ']') break;
            if (*p++ != ',') return 0;
        }
        p++; /* the row's ']' */
        if (*width >= 0 && count != *width) return 0;
        *width = count;
        (*n)++;
        p = skip_ws(p, end);
        if (p == end) return 0;
        if (*p == ']') break;
        if (*p++ != ',') return 0;
        p = skip_ws(p, end);
    }
    p = skip_ws(p + 1, end);
    if (p == end || *p++ != '}') return 0;
    return skip_ws(p, end) == end;
}

static PyObject *v1_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "v1_rows takes (body: bytes[, float32: bool])");
        return NULL;
    }
    PyObject *arg = args[0];
    const int float32 = nargs == 2 ? PyObject_IsTrue(args[1]) : 0;
    if (float32 < 0) return NULL;
    const char *start = PyBytes_AS_STRING(arg);
    const char *end = start + PyBytes_GET_SIZE(arg);
    Values values;
    values.data = values.stack;
    values.size = 0;
    values.capacity = sizeof values.stack / sizeof values.stack[0];
    npy_intp n, width;
    int all_integers;
    PyObject *array = NULL;
    if (!parse_rows(start, end, &values, &n, &width, &all_integers)) {
        if (!PyErr_Occurred()) {
            Py_INCREF(Py_None);
            array = Py_None;
        }
        goto done;
    }
    npy_intp shape[2] = {n, width};
    array = PyArray_SimpleNew(2, shape,
                              float32 ? NPY_FLOAT32 : all_integers ? NPY_INT64 : NPY_FLOAT64);
    if (array == NULL) goto done;
    if (float32) {
        /* numpy's astype(float32) of the float64 or int64 array: one rounding of each
           value (integers of at most 15 digits are exact as doubles). */
        float *out = PyArray_DATA((PyArrayObject *)array);
        for (npy_intp i = 0; i < values.size; i++) out[i] = (float)values.data[i];
    } else if (all_integers) {
        int64_t *out = PyArray_DATA((PyArrayObject *)array);
        for (npy_intp i = 0; i < values.size; i++) out[i] = (int64_t)values.data[i];
    } else {
        memcpy(PyArray_DATA((PyArrayObject *)array), values.data,
               (size_t)values.size * sizeof(double));
    }
done:
    if (values.data != values.stack) PyMem_Free(values.data);
    return array;
}

static PyMethodDef methods[] = {
    {"v1_rows", (PyCFunction)(void (*)(void))v1_rows, METH_FASTCALL,
     "{\"instances\": [[numbers], ...]} -> int64 or float64 (n, features) (float32 if "
     "asked), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rows", "Compiled v1 body parser (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__rows(void) {
    import_array();
    return PyModule_Create(&module);
}
