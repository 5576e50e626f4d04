/*
 * Keyed noise's seeds in C: HMAC-SHA256 of every row of a batch, with OpenSSL.
 *
 *   hmac_seeds(key, prefix, rows) -> uint64 ndarray (n,)
 *
 * Seed i is the first 8 bytes, read little-endian, of
 * HMAC-SHA256(key, prefix || canonical bytes of rows[i]) (RFC 2104), exactly what
 * `KeyedSeeder.seeds` (noise.py) computes with hashlib, which documents the
 * message. key: the caller's, already bound to the tenant's defense parameters
 * (`noise.parameter_key`), so nothing here depends on them; it is hashed first
 * when longer than a block, as RFC 2104 says, though derived keys never are.
 * rows: a C-contiguous float32 ndarray whose first axis is the batch;
 * canonical bytes are its own, with -0.0 read as +0.0 (as `canonical_rows`).
 *
 * This exists because the hashlib loop spends 1.5-3 us a row on Python calls
 * around a 3 KB SHA-256 that costs about 2.5 us: here the whole batch is one call,
 * without the GIL. Built as an optional extension linked to libcrypto (setup.py):
 * where it is missing, the hashlib loop runs instead, with the same seeds.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <Python.h>
#include <numpy/arrayobject.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64  /* SHA-256 block size in bytes */
#define DIGEST 32 /* SHA-256 digest size in bytes */

/* SHA-256, looked up once: OpenSSL 3 looks a digest up again on every use of
   EVP_sha256() (about a microsecond), more than hashing a short row. */
static const EVP_MD *sha256(void) {
    static const EVP_MD *md = NULL; /* set under the GIL */
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    if (md == NULL) md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
    if (md == NULL) md = EVP_sha256();
#endif
    return md;
}

/* ctx <- SHA-256 state after hashing (key ^ pad) || extra. */
static int padded_state(EVP_MD_CTX *ctx, const unsigned char *key, unsigned char pad,
                        const char *extra, Py_ssize_t extra_len) {
    unsigned char padded[BLOCK];
    for (int i = 0; i < BLOCK; i++) padded[i] = key[i] ^ pad;
    return EVP_DigestInit_ex(ctx, sha256(), NULL) && EVP_DigestUpdate(ctx, padded, BLOCK) &&
           (extra_len == 0 || EVP_DigestUpdate(ctx, extra, (size_t)extra_len));
}

/* Seeds for n float32 rows of `width` values; the GIL may be released. 1 on success.
   A row holding -0.0 is hashed from a copy with +0.0 there (canonical bytes). */
static int seed_rows(const EVP_MD_CTX *inner, const EVP_MD_CTX *outer, const uint32_t *rows,
                     npy_intp n, npy_intp width, uint64_t *seeds) {
    const uint32_t negative_zero = 0x80000000u;
    EVP_MD_CTX *h = EVP_MD_CTX_new();
    uint32_t *folded = NULL;
    if (h == NULL) return 0;
    unsigned char digest[DIGEST];
    int ok = 1;
    for (npy_intp i = 0; ok && i < n; i++) {
        const uint32_t *row = rows + i * width;
        npy_intp j = 0;
        while (j < width && row[j] != negative_zero) j++;
        if (j < width) {
            if (folded == NULL && (folded = malloc((size_t)width * sizeof *folded)) == NULL) {
                ok = 0;
                break;
            }
            for (j = 0; j < width; j++) folded[j] = row[j] == negative_zero ? 0u : row[j];
            row = folded;
        }
        ok = EVP_MD_CTX_copy_ex(h, inner) &&
             EVP_DigestUpdate(h, row, (size_t)width * sizeof *row) &&
             EVP_DigestFinal_ex(h, digest, NULL) && EVP_MD_CTX_copy_ex(h, outer) &&
             EVP_DigestUpdate(h, digest, DIGEST) && EVP_DigestFinal_ex(h, digest, NULL);
        uint64_t seed = 0;
        for (int b = 7; b >= 0; b--) seed = (seed << 8) | digest[b];
        seeds[i] = seed;
    }
    free(folded);
    EVP_MD_CTX_free(h);
    return ok;
}

static PyObject *hmac_seeds(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1]) ||
        !PyArray_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "hmac_seeds(key: bytes, prefix: bytes, rows: ndarray)");
        return NULL;
    }
    PyArrayObject *rows = (PyArrayObject *)args[2];
    if (PyArray_NDIM(rows) < 1 || !PyArray_IS_C_CONTIGUOUS(rows) ||
        PyArray_TYPE(rows) != NPY_FLOAT32) {
        PyErr_SetString(PyExc_ValueError, "rows: expected a C-contiguous float32 array of rows");
        return NULL;
    }
    const npy_intp n = PyArray_DIM(rows, 0);
    const npy_intp width = n == 0 ? 0 : PyArray_SIZE(rows) / n;

    /* RFC 2104: a key longer than a block is hashed first; then zero-padded. */
    unsigned char key[BLOCK] = {0};
    const char *secret = PyBytes_AS_STRING(args[0]);
    const Py_ssize_t secret_len = PyBytes_GET_SIZE(args[0]);
    if (secret_len > BLOCK) {
        if (sha256() == NULL ||
            !EVP_Digest(secret, (size_t)secret_len, key, NULL, sha256(), NULL))
            goto ssl_error;
    } else {
        memcpy(key, secret, (size_t)secret_len);
    }

    PyObject *seeds = PyArray_SimpleNew(1, &n, NPY_UINT64);
    if (seeds == NULL) return NULL;
    EVP_MD_CTX *inner = EVP_MD_CTX_new(), *outer = EVP_MD_CTX_new();
    int ok = inner != NULL && outer != NULL && sha256() != NULL &&
             padded_state(inner, key, 0x36, PyBytes_AS_STRING(args[1]),
                          PyBytes_GET_SIZE(args[1])) &&
             padded_state(outer, key, 0x5c, NULL, 0);
    memset(key, 0, sizeof key);
    if (ok) {
        uint64_t *out = PyArray_DATA((PyArrayObject *)seeds);
        const uint32_t *data = PyArray_DATA(rows); /* float32 bits, aligned */
        /* Other threads run while a large batch hashes (rows stays alive: the caller
           holds it); a short one keeps the GIL, cheaper than a hand-over. */
        if (n * width >= 4096) {
            Py_BEGIN_ALLOW_THREADS;
            ok = seed_rows(inner, outer, data, n, width, out);
            Py_END_ALLOW_THREADS;
        } else {
            ok = seed_rows(inner, outer, data, n, width, out);
        }
    }
    EVP_MD_CTX_free(inner);
    EVP_MD_CTX_free(outer);
    if (ok) return seeds;
    Py_DECREF(seeds);
ssl_error:
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL could not compute HMAC-SHA256");
    return NULL;
}

static PyMethodDef methods[] = {
    {"hmac_seeds", (PyCFunction)(void (*)(void))hmac_seeds, METH_FASTCALL,
     "First 8 bytes (little-endian) of HMAC-SHA256(key, prefix || row), per row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_keyed", "Keyed-noise seeds with OpenSSL (optional).", -1, methods,
};

PyMODINIT_FUNC PyInit__keyed(void) {
    import_array();
    return PyModule_Create(&module);
}
