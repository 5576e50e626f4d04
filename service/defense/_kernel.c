/*
 * DynaNoise for one ensemble member with entropy sensitivity, row by row in C.
 *
 * The same operations in the same order as `_defend_in_python` (dynanoise.py),
 * in double precision with the C library's exp and log, so both give the same
 * bits; that function documents the arithmetic. This exists because a numpy or
 * Python version of a one-row request costs 15-20 us, several times its compute:
 * here one call does it in about a microsecond.
 *
 * Built as an optional extension (setup.py): without a C compiler the package
 * falls back to the Python code, with the same results.
 *
 *   defend_entropy(logits, draws, base_variance, lambda_scale, temperature)
 *       -> (probabilities, risk, std)
 *
 * logits: ndarray (n, k) float32 or float64, any strides. draws: None or a float64
 * ndarray (n, k) or (n, 1, k), any strides: row i, class j. Returns new arrays:
 * probabilities (n, k) float32, risk (n,) and std (n,) float64.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <math.h>
#include <numpy/arrayobject.h>

/* (row stride, column stride) in bytes of a (n, k) or (n, 1, k) array. */
static int matrix_strides(PyArrayObject *a, npy_intp n, npy_intp k, npy_intp *rs,
                          npy_intp *cs) {
    const int nd = PyArray_NDIM(a);
    const npy_intp *shape = PyArray_DIMS(a), *strides = PyArray_STRIDES(a);
    if (nd == 2 && shape[0] == n && shape[1] == k) {
        *rs = strides[0];
        *cs = strides[1];
        return 0;
    }
    if (nd == 3 && shape[0] == n && shape[1] == 1 && shape[2] == k) {
        *rs = strides[0];
        *cs = strides[2];
        return 0;
    }
    PyErr_SetString(PyExc_ValueError, "draws: expected shape (n, k) or (n, 1, k)");
    return -1;
}

static PyObject *defend(PyArrayObject *z, PyArrayObject *e, PyObject *variance_obj,
                        PyObject *lambda_obj, PyObject *temperature_obj);

static PyObject *defend_entropy(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "defend_entropy takes 5 arguments");
        return NULL;
    }
    if (!PyArray_Check(args[0]) || (args[1] != Py_None && !PyArray_Check(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "logits and draws must be numpy arrays");
        return NULL;
    }
    /* Other dtypes (float16, integers...) are converted here, once: the common float32
       and float64 inputs are read as they are, with no Python-side dtype checks. */
    PyArrayObject *z = (PyArrayObject *)args[0];
    PyArrayObject *e = args[1] == Py_None ? NULL : (PyArrayObject *)args[1];
    PyObject *z_owned = NULL, *e_owned = NULL, *result = NULL;
    if (PyArray_TYPE(z) != NPY_FLOAT32 && PyArray_TYPE(z) != NPY_FLOAT64) {
        if (!PyArray_ISNUMBER(z) || PyArray_ISCOMPLEX(z)) {
            PyErr_SetString(PyExc_TypeError, "logits: expected real numbers");
            return NULL;
        }
        z_owned = PyArray_FROMANY(args[0], NPY_FLOAT64, 0, 0, NPY_ARRAY_ALIGNED);
        if (z_owned == NULL) return NULL;
        z = (PyArrayObject *)z_owned;
    }
    if (e != NULL && PyArray_TYPE(e) != NPY_FLOAT64) {
        if (!PyArray_ISFLOAT(e) || PyArray_ISCOMPLEX(e)) {
            PyErr_SetString(PyExc_TypeError, "draws: expected real floats");
            goto done;
        }
        e_owned = PyArray_FROMANY(args[1], NPY_FLOAT64, 0, 0, NPY_ARRAY_ALIGNED);
        if (e_owned == NULL) goto done;
        e = (PyArrayObject *)e_owned;
    }
    result = defend(z, e, args[2], args[3], args[4]);
done:
    Py_XDECREF(z_owned);
    Py_XDECREF(e_owned);
    return result;
}

static PyObject *defend(PyArrayObject *z, PyArrayObject *e, PyObject *variance_obj,
                        PyObject *lambda_obj, PyObject *temperature_obj) {
    const double base_variance = PyFloat_AsDouble(variance_obj);
    const double lambda_scale = PyFloat_AsDouble(lambda_obj);
    const double temperature = PyFloat_AsDouble(temperature_obj);
    if (PyErr_Occurred()) return NULL;
    if (PyArray_NDIM(z) != 2 || PyArray_DIM(z, 1) < 2) {
        PyErr_SetString(PyExc_ValueError, "logits: expected shape (n, k), k >= 2");
        return NULL;
    }
    const int type = PyArray_TYPE(z);
    const npy_intp n = PyArray_DIM(z, 0), k = PyArray_DIM(z, 1);
    const int noisy = e != NULL;
    npy_intp e_rs = 0, e_cs = 0;
    const char *eb = NULL;
    if (noisy) {
        if (matrix_strides(e, n, k, &e_rs, &e_cs) < 0) return NULL;
        eb = PyArray_BYTES(e);
    }
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
    PyObject *result = PyTuple_Pack(3, probs, risks, stds);
    Py_DECREF(probs);
    Py_DECREF(risks);
    Py_DECREF(stds);
    return result;
}

static PyMethodDef methods[] = {
    {"defend_entropy", (PyCFunction)(void (*)(void))defend_entropy, METH_FASTCALL,
     "DynaNoise, M = 1, entropy sensitivity: (probabilities, risk, std)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernel", "Compiled DynaNoise kernel (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    import_array();
    return PyModule_Create(&module);
}
