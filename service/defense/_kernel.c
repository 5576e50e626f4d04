/*
 * The defense's hot path in C: DynaNoise for one ensemble member with entropy
 * sensitivity, the pool of fresh N(0, 1) draws it reads, and the repeat monitor's
 * coarse row keys (`quantize_rows`, the same bits as service/serving/repeats.py).
 *
 * defend_entropy does the same operations in the same order as `_defend_in_python`
 * (dynanoise.py), in double precision with the C library's exp and log, so both give
 * the same bits; that function documents the arithmetic. NormalBlocks serves the
 * draws of `StandardNormalPool` (noise.py) in the same order as its Python code.
 * They exist because the Python or numpy versions of a one-row request cost 5-20 us,
 * several times their compute: here a row takes well under a microsecond (the
 * monitor's numpy quantize of a 784-feature row: 30 us with cold caches, 7 us here).
 *
 * Built as an optional extension (setup.py): without a C compiler the package
 * falls back to the Python code, with the same results.
 *
 *   defend_entropy(logits, draws, base_variance, lambda_scale, temperature[, output_type])
 *       -> output_type((probabilities, risk, std)), a plain tuple by default
 *
 * logits: ndarray (n, k), k >= 2, any real dtype (float32 and float64 read as they
 * are), any strides. draws: None or a float ndarray (n, 1, k), any strides: row i,
 * class j. Returns new arrays: probabilities (n, k) float32, risk (n,) and std (n,)
 * float64. output_type: a tuple subclass such as a NamedTuple, filled directly.
 *
 *   NormalBlocks(refill, block_size, class_major_max_classes)
 *       .take(count) -> float64 (count,)
 *       .draws(n, ensemble_size, n_classes) -> float64 (n, ensemble_size, n_classes)
 *       .defend_entropy(logits, base_variance, lambda_scale, temperature[, output_type])
 *           -> defend_entropy(logits, .draws(n, 1, k), ...), without the draws' array
 *
 *   quantize_rows(batch, flush_below, round_offset, keep_mask) -> float32 (n, features)
 *       the repeat monitor's row keys, as service/serving/repeats.py `quantize`
 *   bloom_observe_one(pair, filter_bytes, current, key, hashes) -> bool
 *       the repeat monitor's one-key Bloom lookup and insert (repeats.py)
 *   all_finite(array), label_flips(probabilities, logits)
 *       the request path's checks on its arrays (service/arrays.py), or None where
 *       numpy decides (another dtype, a view with strides)
 *   logit_cells(logits, step, max_cell) -> float32, logits' shape, or None
 *       keyed_logits' key (noise.py `quantized_logits`): clip(floor(z / step), +-max_cell)
 *       of a C-contiguous float32 or float64 array, every operation exact or correctly
 *       rounded, so the same bits as numpy's
 *   keyed_normals(seeds, n_values) -> float64 (2 ceil(n_values / 2), n), or None
 *       keyed noise's counter-based normals, value-major, as noise.py
 *       `keyed_standard_normal` computes them for a class-major batch: SplitMix64 and
 *       Box-Muller, with numpy's own float64 log, cos and sin loops, so the bits are
 *       numpy's whatever its CPU dispatch picks (None when they cannot be found)
 *
 * refill(size) returns `size` fresh N(0, 1) draws (a float64 ndarray). Every value is
 * served once: the GIL, held from the check to the hand-out, is the lock.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <numpy/arrayobject.h>
#include <numpy/ufuncobject.h>

/* (row stride, column stride) in bytes of draws shaped (n, 1, k), as apply_dynanoise's
   contract says (one ensemble member). */
static int draw_strides(PyArrayObject *a, npy_intp n, npy_intp k, npy_intp *rs, npy_intp *cs) {
    const npy_intp *shape = PyArray_DIMS(a), *strides = PyArray_STRIDES(a);
    if (PyArray_NDIM(a) == 3 && shape[0] == n && shape[1] == 1 && shape[2] == k) {
        *rs = strides[0];
        *cs = strides[2];
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "standard_normal must have shape (%zd, 1, %zd)", (Py_ssize_t)n,
                 (Py_ssize_t)k);
    return -1;
}

/* Where the draws of row i, class j lie: eb + i rs + j cs (eb NULL: no noise). */
typedef struct {
    const char *eb;
    npy_intp rs, cs;
} DrawLayout;

static PyObject *defend(PyArrayObject *z, DrawLayout draws, PyObject *variance_obj,
                        PyObject *lambda_obj, PyObject *temperature_obj, PyObject *output_type);

static int check_logits_shape(PyArrayObject *z) {
    if (PyArray_NDIM(z) == 2 && PyArray_DIM(z, 1) >= 2) return 0;
    PyErr_SetString(PyExc_ValueError, "logits must have shape (n, k) with k >= 2");
    return -1;
}
static PyObject *checked_output_type(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at);
static PyObject *real_logits(PyObject *arg, PyObject **owned);

static PyObject *defend_entropy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 && nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "defend_entropy takes 5 or 6 arguments");
        return NULL;
    }
    PyObject *output_type = checked_output_type(args, nargs, 5);
    if (output_type == NULL) return NULL;
    if (!PyArray_Check(args[0]) || (args[1] != Py_None && !PyArray_Check(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "logits and draws must be numpy arrays");
        return NULL;
    }
    PyObject *z_owned = NULL, *e_owned = NULL, *result = NULL;
    PyArrayObject *z = (PyArrayObject *)real_logits(args[0], &z_owned);
    if (z == NULL) return NULL;
    PyArrayObject *e = args[1] == Py_None ? NULL : (PyArrayObject *)args[1];
    if (e != NULL && PyArray_TYPE(e) != NPY_FLOAT64) {
        if (!PyArray_ISFLOAT(e) || PyArray_ISCOMPLEX(e)) {
            PyErr_SetString(PyExc_TypeError, "draws: expected real floats");
            goto done;
        }
        e_owned = PyArray_FROMANY(args[1], NPY_FLOAT64, 0, 0, NPY_ARRAY_ALIGNED);
        if (e_owned == NULL) goto done;
        e = (PyArrayObject *)e_owned;
    }
    DrawLayout draws = {NULL, 0, 0};
    if (e != NULL) {
        if (check_logits_shape(z) < 0) goto done;
        if (draw_strides(e, PyArray_DIM(z, 0), PyArray_DIM(z, 1), &draws.rs, &draws.cs) < 0)
            goto done;
        draws.eb = PyArray_BYTES(e);
    }
    result = defend(z, draws, args[2], args[3], args[4], output_type);
done:
    Py_XDECREF(z_owned);
    Py_XDECREF(e_owned);
    return result;
}

/* args[at] when given (a tuple type, such as a NamedTuple), else tuple itself. */
static PyObject *checked_output_type(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at) {
    PyObject *output_type = nargs > at ? args[at] : (PyObject *)&PyTuple_Type;
    if (!PyType_Check(output_type) ||
        !PyType_IsSubtype((PyTypeObject *)output_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "output_type must be a tuple type (a NamedTuple)");
        return NULL;
    }
    return output_type;
}

/* The logits as an array the loop reads: float32 and float64 as they are (a borrowed
   reference), other real dtypes (float16, integers...) converted once into *owned. */
static PyObject *real_logits(PyObject *arg, PyObject **owned) {
    PyArrayObject *z = (PyArrayObject *)arg;
    if (PyArray_TYPE(z) == NPY_FLOAT32 || PyArray_TYPE(z) == NPY_FLOAT64) return arg;
    if (!PyArray_ISNUMBER(z) || PyArray_ISCOMPLEX(z)) {
        PyErr_SetString(PyExc_TypeError, "logits: expected real numbers");
        return NULL;
    }
    *owned = PyArray_FROMANY(arg, NPY_FLOAT64, 0, 0, NPY_ARRAY_ALIGNED);
    return *owned;
}

static PyObject *defend(PyArrayObject *z, DrawLayout draws, PyObject *variance_obj,
                        PyObject *lambda_obj, PyObject *temperature_obj, PyObject *output_type) {
    const double base_variance = PyFloat_AsDouble(variance_obj);
    const double lambda_scale = PyFloat_AsDouble(lambda_obj);
    const double temperature = PyFloat_AsDouble(temperature_obj);
    if (PyErr_Occurred()) return NULL;
    if (check_logits_shape(z) < 0) return NULL;
    const int type = PyArray_TYPE(z);
    const npy_intp n = PyArray_DIM(z, 0), k = PyArray_DIM(z, 1);
    const int noisy = draws.eb != NULL;
    const char *eb = draws.eb;
    const npy_intp e_rs = draws.rs, e_cs = draws.cs;
    npy_intp shape[2] = {n, k};
    PyObject *probs = PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    PyObject *risks = PyArray_SimpleNew(1, shape, NPY_FLOAT64);
    PyObject *stds = PyArray_SimpleNew(1, shape, NPY_FLOAT64);
    double stack_row[64];
    double *row = k <= 64 ? stack_row : PyMem_Malloc((size_t)k * sizeof(double));
    if (probs == NULL || risks == NULL || stds == NULL || row == NULL) {
        Py_XDECREF(probs);
        Py_XDECREF(risks);
        Py_XDECREF(stds);
        if (row != NULL && row != stack_row) PyMem_Free(row);
        return row == NULL ? PyErr_NoMemory() : NULL;
    }
    const int single = type == NPY_FLOAT32;
    const char *zb = PyArray_BYTES(z);
    const npy_intp z_rs = PyArray_STRIDE(z, 0), z_cs = PyArray_STRIDE(z, 1);
    float *out_probs = PyArray_DATA((PyArrayObject *)probs);
    double *out_risk = PyArray_DATA((PyArrayObject *)risks);
    double *out_std = PyArray_DATA((PyArrayObject *)stds);
    const double neg_inv_log_k = -1.0 / log((double)k);

    /* Let other threads run during long batches only: giving the GIL up and getting
       it back costs more than a short batch, and may wait a switch interval. */
    PyThreadState *released = n * k >= 16384 ? PyEval_SaveThread() : NULL;
    for (npy_intp i = 0; i < n; i++) {
        const char *zr = zb + i * z_rs;
        for (npy_intp j = 0; j < k; j++) {
            row[j] = single ? (double)*(const float *)(zr + j * z_cs)
                            : *(const double *)(zr + j * z_cs);
        }
        double top = row[0];
        for (npy_intp j = 1; j < k; j++) {
            if (row[j] > top) top = row[j];
        }
        double total = 0.0, weighted = 0.0;
        for (npy_intp j = 0; j < k; j++) {
            const double shifted = row[j] - top;
            const double ex = exp(shifted);
            total += ex;
            weighted += ex * shifted;
        }
        double risk = (log(total) - weighted / total) * neg_inv_log_k + 1.0;
        risk = risk < 0.0 ? 0.0 : risk > 1.0 ? 1.0 : risk;
        const double std = sqrt(base_variance * (1.0 + lambda_scale * risk));
        if (noisy) {
            const char *er = eb + i * e_rs;
            for (npy_intp j = 0; j < k; j++) {
                row[j] = (row[j] + std * *(const double *)(er + j * e_cs)) / temperature;
            }
        } else {
            for (npy_intp j = 0; j < k; j++) row[j] = row[j] / temperature;
        }
        top = row[0];
        for (npy_intp j = 1; j < k; j++) {
            if (row[j] > top) top = row[j];
        }
        total = 0.0;
        for (npy_intp j = 0; j < k; j++) {
            row[j] = exp(row[j] - top);
            total += row[j];
        }
        float *out = out_probs + i * k;
        for (npy_intp j = 0; j < k; j++) out[j] = (float)(row[j] / total);
        out_risk[i] = risk;
        out_std[i] = std;
    }
    if (released != NULL) PyEval_RestoreThread(released);
    if (row != stack_row) PyMem_Free(row);
    /* A tuple subclass instance built directly: calling a NamedTuple's __new__ from
       Python costs more than this whole kernel on one row. */
    PyObject *result = output_type == (PyObject *)&PyTuple_Type
                           ? PyTuple_New(3)
                           : ((PyTypeObject *)output_type)->tp_alloc((PyTypeObject *)output_type, 3);
    if (result == NULL) {
        Py_DECREF(probs);
        Py_DECREF(risks);
        Py_DECREF(stds);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, probs);
    PyTuple_SET_ITEM(result, 1, risks);
    PyTuple_SET_ITEM(result, 2, stds);
    return result;
}


/* ---- NormalBlocks: fresh N(0, 1) draws handed out from pre-drawn blocks ---- */

typedef struct {
    PyObject_HEAD
    PyObject *refill;      /* refill(size) -> float64 ndarray of `size` N(0, 1) draws */
    PyObject *block;       /* the block being served; NULL until first use */
    npy_intp used;         /* values of `block` already served */
    npy_intp block_size;
    npy_intp class_major_max; /* the layout rule of noise.class_major */
} NormalBlocks;

/* `size` new draws from refill(), checked: a contiguous float64 array of that size. */
static PyObject *draw_block(NormalBlocks *self, npy_intp size) {
    PyObject *fresh = PyObject_CallFunction(self->refill, "n", (Py_ssize_t)size);
    if (fresh == NULL) return NULL;
    if (!PyArray_CheckExact(fresh) || PyArray_TYPE((PyArrayObject *)fresh) != NPY_FLOAT64 ||
        !PyArray_IS_C_CONTIGUOUS((PyArrayObject *)fresh) ||
        PyArray_SIZE((PyArrayObject *)fresh) != size) {
        Py_DECREF(fresh);
        PyErr_SetString(PyExc_TypeError, "refill must return a contiguous float64 array of size n");
        return NULL;
    }
    return fresh;
}

/* Reserve `count` values: a new reference to the array holding them, their address in
   *data. Larger requests than a block get an array of their own, as in noise.py. */
static PyObject *reserve(NormalBlocks *self, npy_intp count, const char **data) {
    if (count < 0) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 0");
        return NULL;
    }
    if (count > self->block_size) {
        PyObject *own = draw_block(self, count);
        if (own != NULL) *data = PyArray_BYTES((PyArrayObject *)own);
        return own;
    }
    if (self->block == NULL || self->used + count > self->block_size) {
        /* refill may let other threads run; whatever they did, the block set here is
           new, and no value of the one it replaces is served again. */
        PyObject *fresh = draw_block(self, self->block_size);
        if (fresh == NULL) return NULL;
        Py_XSETREF(self->block, fresh);
        self->used = 0;
    }
    *data = PyArray_BYTES((PyArrayObject *)self->block) + self->used * (npy_intp)sizeof(double);
    self->used += count;
    Py_INCREF(self->block);
    return self->block;
}

/* A float64 view of `owner`'s memory at `data` (steals the reference to owner). */
static PyObject *view_of(PyObject *owner, const char *data, int nd, npy_intp *dims,
                         npy_intp *strides) {
    PyObject *view = PyArray_NewFromDescr(&PyArray_Type, PyArray_DescrFromType(NPY_FLOAT64), nd,
                                          dims, strides, (void *)data,
                                          NPY_ARRAY_ALIGNED | NPY_ARRAY_WRITEABLE, NULL);
    if (view == NULL) {
        Py_DECREF(owner);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)view, owner) < 0) { /* steals owner */
        Py_DECREF(view);
        return NULL;
    }
    return view;
}

static PyObject *blocks_take(NormalBlocks *self, PyObject *arg) {
    const npy_intp count = PyLong_AsSsize_t(arg);
    if (count == -1 && PyErr_Occurred()) return NULL;
    const char *data;
    PyObject *owner = reserve(self, count, &data);
    if (owner == NULL) return NULL;
    npy_intp dims[1] = {count}, strides[1] = {sizeof(double)};
    return view_of(owner, data, 1, dims, strides);
}

static PyObject *blocks_draws(NormalBlocks *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "draws takes (n, ensemble_size, n_classes)");
        return NULL;
    }
    const npy_intp n = PyLong_AsSsize_t(args[0]);
    const npy_intp m = PyLong_AsSsize_t(args[1]);
    const npy_intp k = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (n < 0 || m < 1 || k < 1 || (n > 0 && m > PY_SSIZE_T_MAX / n / k)) {
        PyErr_SetString(PyExc_ValueError, "draws: bad shape");
        return NULL;
    }
    const char *data;
    PyObject *owner = reserve(self, n * m * k, &data);
    if (owner == NULL) return NULL;
    const npy_intp d = sizeof(double);
    npy_intp dims[3] = {n, m, k};
    npy_intp strides[3] = {m * k * d, k * d, d}; /* row-major */
    if (n > 1 && m == 1 && k <= self->class_major_max) {
        /* class-major: value (i, 0, j) at flat[j n + i], as flat.reshape(k, n).T[:, None] */
        strides[0] = d;
        strides[1] = 0;
        strides[2] = n * d;
    }
    return view_of(owner, data, 3, dims, strides);
}

/* defend_entropy with this pool's next n k draws, laid out as `draws` would give them:
   the same values and the same answer as defend_entropy(z, self.draws(n, 1, k), ...),
   without building the draws' array (the one-row request's defense in one call). */
static PyObject *blocks_defend_entropy(NormalBlocks *self, PyObject *const *args,
                                       Py_ssize_t nargs) {
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "defend_entropy takes 4 or 5 arguments");
        return NULL;
    }
    PyObject *output_type = checked_output_type(args, nargs, 4);
    if (output_type == NULL) return NULL;
    if (!PyArray_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "logits must be a numpy array");
        return NULL;
    }
    PyObject *z_owned = NULL;
    PyArrayObject *z = (PyArrayObject *)real_logits(args[0], &z_owned);
    if (z == NULL) return NULL;
    PyObject *result = NULL;
    if (check_logits_shape(z) == 0) {
        const npy_intp n = PyArray_DIM(z, 0), k = PyArray_DIM(z, 1), d = sizeof(double);
        DrawLayout draws;
        /* The block stays alive while the kernel reads it (a long batch lets other
           threads run, and one of them may replace the block). */
        PyObject *owner = reserve(self, n * k, &draws.eb);
        if (owner != NULL) {
            const int class_major = n > 1 && k <= self->class_major_max;
            draws.rs = class_major ? d : k * d;
            draws.cs = class_major ? n * d : d;
            result = defend(z, draws, args[1], args[2], args[3], output_type);
            Py_DECREF(owner);
        }
    }
    Py_XDECREF(z_owned);
    return result;
}

static int blocks_init(NormalBlocks *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"refill", "block_size", "class_major_max_classes", NULL};
    PyObject *refill;
    Py_ssize_t block_size, class_major_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onn", keywords, &refill, &block_size,
                                     &class_major_max))
        return -1;
    if (!PyCallable_Check(refill) || block_size < 1) {
        PyErr_SetString(PyExc_ValueError, "refill must be callable and block_size >= 1");
        return -1;
    }
    Py_INCREF(refill);
    Py_XSETREF(self->refill, refill);
    Py_CLEAR(self->block);
    self->used = 0;
    self->block_size = block_size;
    self->class_major_max = class_major_max;
    return 0;
}

static void blocks_dealloc(NormalBlocks *self) {
    Py_XDECREF(self->refill);
    Py_XDECREF(self->block);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef blocks_methods[] = {
    {"take", (PyCFunction)blocks_take, METH_O, "count draws, shape (count,), never served before."},
    {"draws", (PyCFunction)(void (*)(void))blocks_draws, METH_FASTCALL,
     "Draws of shape (n, ensemble_size, n_classes), in the defense's layout."},
    {"defend_entropy", (PyCFunction)(void (*)(void))blocks_defend_entropy, METH_FASTCALL,
     "defend_entropy(logits, self.draws(n, 1, k), ...) in one call: (probabilities, risk, std)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject NormalBlocksType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "service.defense._kernel.NormalBlocks",
    .tp_basicsize = sizeof(NormalBlocks),
    .tp_dealloc = (destructor)blocks_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Fresh N(0, 1) draws from pre-drawn blocks, each served once.",
    .tp_methods = blocks_methods,
    .tp_init = (initproc)blocks_init,
    .tp_new = PyType_GenericNew,
};

/* ---- quantize_rows: the repeat monitor's row keys (service/serving/repeats.py) ---- */

/* quantize_rows(batch, flush_below, round_offset, keep_mask) -> float32 (n, features):
   `repeats.quantize` in one pass, the same bits. batch: an array of any real dtype and
   shape (n, ...), read as float32 (as numpy's astype casts it). Per row: features with
   |x| < max(flush_below * max |x|, 2^-126) become +0 (none when the row holds a NaN,
   as numpy's max then is NaN), the others (bits + round_offset) & keep_mask. */
static PyObject *quantize_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "quantize_rows takes (batch, flush_below, round_offset, keep_mask)");
        return NULL;
    }
    const float flush_below = (float)PyFloat_AsDouble(args[1]);
    const unsigned long offset = PyLong_AsUnsignedLong(args[2]);
    const unsigned long mask = PyLong_AsUnsignedLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (!PyArray_Check(args[0]) || PyArray_NDIM((PyArrayObject *)args[0]) < 1) {
        PyErr_SetString(PyExc_TypeError, "batch must be a numpy array of at least one dimension");
        return NULL;
    }
    if (!PyArray_ISNUMBER((PyArrayObject *)args[0]) || PyArray_ISCOMPLEX((PyArrayObject *)args[0])) {
        PyErr_SetString(PyExc_TypeError, "batch: expected real numbers");
        return NULL;
    }
    PyArrayObject *rows = (PyArrayObject *)PyArray_FROMANY(
        args[0], NPY_FLOAT32, 0, 0, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_FORCECAST);
    if (rows == NULL) return NULL;
    const npy_intp n = PyArray_DIM(rows, 0);
    const npy_intp f = n > 0 ? PyArray_SIZE(rows) / n : 0;
    npy_intp shape[2] = {n, f};
    PyObject *out = PyArray_SimpleNew(2, shape, NPY_FLOAT32);
    if (out == NULL) {
        Py_DECREF(rows);
        return NULL;
    }
    const float smallest_normal = 0x1p-126f;
    const uint32_t add = (uint32_t)offset, keep = (uint32_t)mask;
    const float *x = PyArray_DATA(rows);
    uint32_t *bits = PyArray_DATA((PyArrayObject *)out);
    for (npy_intp i = 0; i < n; i++, x += f, bits += f) {
        float top = 0.0f;
        int has_nan = 0;
        for (npy_intp j = 0; j < f; j++) {
            const float m = fabsf(x[j]);
            if (m != m) has_nan = 1;
            else if (m > top) top = m;
        }
        float floor = top * flush_below;
        if (floor < smallest_normal) floor = smallest_normal;
        for (npy_intp j = 0; j < f; j++) {
            uint32_t b;
            memcpy(&b, &x[j], sizeof b);
            b = (uint32_t)(b + add) & keep;
            bits[j] = !has_nan && fabsf(x[j]) < floor ? 0u : b;
        }
    }
    Py_DECREF(rows);
    return out;
}

/* bloom_observe_one(pair, filter_bytes, current, key, hashes) -> bool: the repeat
   monitor's one-key step (service/serving/repeats.py, BloomSketch.found_one then
   add_one): whether either filter of `pair` (a bytearray of two filters of
   filter_bytes bytes each) has every bit of `key`, then the key's bits set in filter
   `current`. Bit i of the key: g_i = (h1 + i * (h2 | 1)) mod m, m = 8 filter_bytes (a
   power of two), h1 and h2 the key's low and high 32 bits. */
static PyObject *bloom_observe_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyByteArray_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "bloom_observe_one takes (pair: bytearray, filter_bytes, current, key, hashes)");
        return NULL;
    }
    const Py_ssize_t filter_bytes = PyLong_AsSsize_t(args[1]);
    const long current = PyLong_AsLong(args[2]);
    const unsigned long long key = PyLong_AsUnsignedLongLong(args[3]);
    const long hashes = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    const uint64_t bits = (uint64_t)filter_bytes * 8;
    if (filter_bytes < 1 || (bits & (bits - 1)) != 0 || bits > (UINT64_C(1) << 32) ||
        PyByteArray_GET_SIZE(args[0]) != 2 * filter_bytes || (current != 0 && current != 1) ||
        hashes < 1 || hashes > 64) {
        PyErr_SetString(PyExc_ValueError, "bloom_observe_one: bad filter pair or arguments");
        return NULL;
    }
    unsigned char *pair = (unsigned char *)PyByteArray_AS_STRING(args[0]);
    const uint64_t mask = bits - 1, first = key & 0xFFFFFFFFu, step = (key >> 32) | 1u;
    uint64_t spots[64];
    for (long i = 0; i < hashes; i++) spots[i] = (first + (uint64_t)i * step) & mask;
    int found = 0;
    for (int f = 0; f < 2 && !found; f++) {
        const unsigned char *filter = pair + f * filter_bytes;
        int all = 1;
        for (long i = 0; i < hashes && all; i++)
            all = (filter[spots[i] >> 3] >> (spots[i] & 7)) & 1;
        found = all;
    }
    unsigned char *target = pair + current * filter_bytes;
    for (long i = 0; i < hashes; i++) target[spots[i] >> 3] |= (unsigned char)(1u << (spots[i] & 7));
    return PyBool_FromLong(found);
}

/* ---- checks on the request's arrays (service/arrays.py) ---- */

/* A C-contiguous float32 or float64 array's type, else 0: the caller lets numpy decide. */
static int contiguous_float(PyObject *arg) {
    if (!PyArray_Check(arg)) return 0;
    PyArrayObject *a = (PyArrayObject *)arg;
    const int type = PyArray_TYPE(a);
    if ((type != NPY_FLOAT32 && type != NPY_FLOAT64) || !PyArray_IS_C_CONTIGUOUS(a) ||
        !PyArray_ISNOTSWAPPED(a))
        return 0;
    return type;
}

/* all_finite(array) -> bool, or None for an array that is not a C-contiguous float32 or
   float64 one: np.isfinite(array).all(). */
static PyObject *all_finite(PyObject *self, PyObject *arg) {
    const int type = contiguous_float(arg);
    if (!type) Py_RETURN_NONE;
    const npy_intp size = PyArray_SIZE((PyArrayObject *)arg);
    const void *data = PyArray_DATA((PyArrayObject *)arg);
    int finite = 1;
    if (type == NPY_FLOAT32) {
        const float *v = data;
        for (npy_intp i = 0; i < size && finite; i++) finite = isfinite(v[i]);
    } else {
        const double *v = data;
        for (npy_intp i = 0; i < size && finite; i++) finite = isfinite(v[i]);
    }
    return PyBool_FromLong(finite);
}

/* np.argmax of row i of a (n, k) array: the first largest value, or the first NaN. */
static npy_intp row_argmax(const char *data, int type, npy_intp i, npy_intp k) {
    npy_intp best = 0;
    double top = 0.0;
    for (npy_intp j = 0; j < k; j++) {
        const double v = type == NPY_FLOAT32 ? (double)((const float *)data)[i * k + j]
                                             : ((const double *)data)[i * k + j];
        if (v != v) return j;
        if (j == 0 || v > top) {
            top = v;
            best = j;
        }
    }
    return best;
}

/* label_flips(probabilities, logits) -> int, or None unless both are C-contiguous
   float32 or float64 arrays of one (n, k) shape: the rows whose argmax differs,
   np.count_nonzero(probabilities.argmax(axis=1) != logits.argmax(axis=1)). */
static PyObject *label_flips(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "label_flips takes (probabilities, logits)");
        return NULL;
    }
    const int p_type = contiguous_float(args[0]), z_type = contiguous_float(args[1]);
    if (!p_type || !z_type) Py_RETURN_NONE;
    PyArrayObject *p = (PyArrayObject *)args[0], *z = (PyArrayObject *)args[1];
    if (PyArray_NDIM(p) != 2 || PyArray_NDIM(z) != 2 || PyArray_DIM(p, 0) != PyArray_DIM(z, 0) ||
        PyArray_DIM(p, 1) != PyArray_DIM(z, 1) || PyArray_DIM(p, 1) < 1)
        Py_RETURN_NONE;
    const npy_intp n = PyArray_DIM(p, 0), k = PyArray_DIM(p, 1);
    npy_intp flips = 0;
    for (npy_intp i = 0; i < n; i++) {
        flips += row_argmax(PyArray_BYTES(p), p_type, i, k) !=
                 row_argmax(PyArray_BYTES(z), z_type, i, k);
    }
    return PyLong_FromSsize_t((Py_ssize_t)flips);
}

/* logit_cells(logits, step, max_cell): see the header. */
static PyObject *logit_cells(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "logit_cells takes (logits, step, max_cell)");
        return NULL;
    }
    const int type = contiguous_float(args[0]);
    if (!type) Py_RETURN_NONE;
    const double step = PyFloat_AsDouble(args[1]), max_cell = PyFloat_AsDouble(args[2]);
    if (PyErr_Occurred()) return NULL;
    PyArrayObject *z = (PyArrayObject *)args[0];
    PyObject *out = PyArray_SimpleNew(PyArray_NDIM(z), PyArray_DIMS(z), NPY_FLOAT32);
    if (out == NULL) return NULL;
    float *cells = PyArray_DATA((PyArrayObject *)out);
    const npy_intp size = PyArray_SIZE(z);
    const void *data = PyArray_DATA(z);
    for (npy_intp i = 0; i < size; i++) {
        const double v = type == NPY_FLOAT32 ? (double)((const float *)data)[i]
                                             : ((const double *)data)[i];
        double cell = floor(v / step);
        if (cell < -max_cell) cell = -max_cell; /* NaN passes as NaN, as np.clip's */
        else if (cell > max_cell) cell = max_cell;
        cells[i] = (float)cell;
    }
    return out;
}

/* numpy's own 1-D loop of a float64 -> float64 ufunc (np.log, np.cos, np.sin). */
typedef struct {
    PyUFuncGenericFunction loop;
    void *data;
} DoubleLoop;

static DoubleLoop log_loop, cos_loop, sin_loop;

static int find_double_loop(PyObject *numpy, const char *name, DoubleLoop *found) {
    found->loop = NULL;
    PyObject *ufunc = PyObject_GetAttrString(numpy, name);
    if (ufunc == NULL) return -1;
    if (PyObject_TypeCheck(ufunc, &PyUFunc_Type)) {
        PyUFuncObject *u = (PyUFuncObject *)ufunc;
        for (int i = 0; u->functions != NULL && i < u->ntypes; i++) {
            if (u->nargs == 2 && u->types[2 * i] == NPY_DOUBLE &&
                u->types[2 * i + 1] == NPY_DOUBLE) {
                found->loop = u->functions[i];
                found->data = u->data != NULL ? u->data[i] : NULL;
                break;
            }
        }
    }
    Py_DECREF(ufunc);  /* numpy's ufuncs live as long as numpy: the loop stays valid */
    return 0;
}

static void run_double_loop(const DoubleLoop *f, const double *in, double *out, npy_intp count) {
    char *args[2] = {(char *)in, (char *)out};
    npy_intp dimensions[1] = {count}, steps[2] = {sizeof(double), sizeof(double)};
    f->loop(args, dimensions, steps, f->data);
}

/* keyed_normals(seeds, n_values): see the header. The operations and their order are
   those of keyed_standard_normal's class-major path: state[j, i] = (j + 1) gamma +
   seed_i, SplitMix64's mix, u = ((state >> 11) + 0.5) 2^-53, then for the first half
   of the values r = sqrt(-2 log u), and for the second a = 2 pi u, and the normals are
   (cos a) r, then (sin a) r. */
static PyObject *keyed_normals(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "keyed_normals takes (seeds, n_values)");
        return NULL;
    }
    if (log_loop.loop == NULL || cos_loop.loop == NULL || sin_loop.loop == NULL ||
        !PyArray_Check(args[0]))
        Py_RETURN_NONE;
    PyArrayObject *seeds = (PyArrayObject *)args[0];
    if (PyArray_TYPE(seeds) != NPY_UINT64 || PyArray_NDIM(seeds) != 1 ||
        !PyArray_IS_C_CONTIGUOUS(seeds))
        Py_RETURN_NONE;
    const Py_ssize_t n_values = PyLong_AsSsize_t(args[1]);
    if (n_values == -1 && PyErr_Occurred()) return NULL;
    if (n_values < 1) {
        PyErr_SetString(PyExc_ValueError, "n_values must be >= 1");
        return NULL;
    }
    const npy_intp n = PyArray_DIM(seeds, 0), n_pairs = (n_values + 1) / 2;
    npy_intp shape[2] = {2 * n_pairs, n};
    PyObject *out = PyArray_SimpleNew(2, shape, NPY_FLOAT64);
    if (out == NULL) return NULL;
    const npy_intp half = n_pairs * n;
    double *normals = PyArray_DATA((PyArrayObject *)out);
    double *cosines = half > 0 ? PyMem_Malloc((size_t)half * sizeof(double)) : NULL;
    if (half > 0 && cosines == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    const uint64_t *seed = PyArray_DATA(seeds);
    for (npy_intp j = 0; j < 2 * n_pairs; j++) {
        const uint64_t offset = (uint64_t)(j + 1) * 0x9E3779B97F4A7C15ULL;
        for (npy_intp i = 0; i < n; i++) {
            uint64_t z = offset + seed[i];
            z ^= z >> 30;
            z *= 0xBF58476D1CE4E5B9ULL;
            z ^= z >> 27;
            z *= 0x94D049BB133111EBULL;
            z ^= z >> 31;
            double u = (double)(z >> 11);
            u += 0.5;
            u *= 1.0 / 9007199254740992.0; /* 2^-53 */
            normals[j * n + i] = u;
        }
    }
    double *radius = normals, *angle = normals + half;
    run_double_loop(&log_loop, radius, radius, half);
    for (npy_intp i = 0; i < half; i++) {
        radius[i] *= -2.0;
        radius[i] = sqrt(radius[i]);
        angle[i] *= 2.0 * 3.141592653589793; /* noise.py's _TWO_PI, 2.0 * np.pi */
    }
    run_double_loop(&cos_loop, angle, cosines, half);
    run_double_loop(&sin_loop, angle, angle, half);
    for (npy_intp i = 0; i < half; i++) {
        angle[i] *= radius[i];
        radius[i] = cosines[i] * radius[i];
    }
    PyMem_Free(cosines);
    return out;
}

static PyMethodDef methods[] = {
    {"defend_entropy", (PyCFunction)(void (*)(void))defend_entropy, METH_FASTCALL,
     "DynaNoise, M = 1, entropy sensitivity: (probabilities, risk, std)."},
    {"bloom_observe_one", (PyCFunction)(void (*)(void))bloom_observe_one, METH_FASTCALL,
     "The repeat monitor's one-key lookup then insert: whether the key was found."},
    {"all_finite", all_finite, METH_O,
     "np.isfinite(a).all() for a C-contiguous float32/float64 array, else None."},
    {"label_flips", (PyCFunction)(void (*)(void))label_flips, METH_FASTCALL,
     "Rows whose argmax differs between two (n, k) arrays, or None."},
    {"quantize_rows", (PyCFunction)(void (*)(void))quantize_rows, METH_FASTCALL,
     "The repeat monitor's coarse rows (repeats.quantize): float32 (n, features)."},
    {"logit_cells", (PyCFunction)(void (*)(void))logit_cells, METH_FASTCALL,
     "keyed_logits' key (noise.quantized_logits): float32 cells, or None."},
    {"keyed_normals", (PyCFunction)(void (*)(void))keyed_normals, METH_FASTCALL,
     "Keyed noise's normals, value-major (noise.keyed_standard_normal), or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "Compiled DynaNoise kernel (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    import_array();
    import_umath();
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy == NULL) return NULL;
    const int failed = find_double_loop(numpy, "log", &log_loop) < 0 ||
                      find_double_loop(numpy, "cos", &cos_loop) < 0 ||
                      find_double_loop(numpy, "sin", &sin_loop) < 0;
    Py_DECREF(numpy);
    if (failed) return NULL;
    if (PyType_Ready(&NormalBlocksType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&NormalBlocksType);
    if (PyModule_AddObject(m, "NormalBlocks", (PyObject *)&NormalBlocksType) < 0) {
        Py_DECREF(&NormalBlocksType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
