/* uint8 pixels -> float32 planes in [-1, 1], in one pass: src.datasets.sample.planes.float_planes.
 *
 * numpy needs five passes over each plane for this (gather the channel, narrow, widen, divide,
 * subtract: x / 127.5 - 1 rounds twice, and no one-rounding form gives the same floats), and numba,
 * which did it in one, cost every process that builds a dataset a heavy import and a compilation
 * (bench/RESULTS.md, "Float planes"). This is that one pass, at no start-up cost: a table of the
 * 256 results (computed here with the same two float roundings), read once a channel value. Built
 * at install when a C compiler is there (pyproject.toml); planes.py falls back to numpy, with the
 * same floats, when it is not.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static float table[256];

static int is_format(const Py_buffer *view, const char *format)
{
    const char *f = view->format;
    if (f == NULL)
        return strcmp(format, "B") == 0;
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    return strcmp(f, format) == 0;
}

PyDoc_STRVAR(normalise_doc,
"normalise(pixels, planes)\n\n"
"pixels: a uint8 array [3, H, W] in any layout (a buffer with strides); planes: a C-contiguous\n"
"float32 array [3, H, W], written with x / 127.5 - 1 (float32) of each value. Raises ValueError\n"
"on other dtypes or shapes.");

static PyObject *normalise(PyObject *module, PyObject *args)
{
    PyObject *pixels_obj, *planes_obj;
    Py_buffer src, dst;
    if (!PyArg_ParseTuple(args, "OO:normalise", &pixels_obj, &planes_obj))
        return NULL;
    if (PyObject_GetBuffer(pixels_obj, &src, PyBUF_STRIDES | PyBUF_FORMAT) < 0)
        return NULL;
    if (PyObject_GetBuffer(planes_obj, &dst, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    if (src.ndim != 3 || dst.ndim != 3 || src.itemsize != 1 || !is_format(&src, "B")
            || dst.itemsize != 4 || !is_format(&dst, "f") || src.shape[0] != 3
            || memcmp(src.shape, dst.shape, 3 * sizeof(Py_ssize_t)) != 0) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "normalise takes uint8 [3, H, W] pixels and float32 planes of that shape");
        return NULL;
    }
    const Py_ssize_t height = src.shape[1], width = src.shape[2];
    const Py_ssize_t channel_stride = src.strides[0], row_stride = src.strides[1], pixel_stride = src.strides[2];
    const uint8_t *pixels = src.buf;
    float *red = dst.buf, *green = red + height * width, *blue = green + height * width;
    Py_BEGIN_ALLOW_THREADS
    /* Pixel by pixel, writing the three planes side by side: each source byte is read once (a plane
     * at a time reads the pixels three times, and is slower). */
    for (Py_ssize_t y = 0; y < height; y++) {
        const uint8_t *row = pixels + y * row_stride;
        for (Py_ssize_t x = 0; x < width; x++) {
            const uint8_t *pixel = row + x * pixel_stride;
            red[x] = table[pixel[0]];
            green[x] = table[pixel[channel_stride]];
            blue[x] = table[pixel[2 * channel_stride]];
        }
        red += width;
        green += width;
        blue += width;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"normalise", normalise, METH_VARARGS, normalise_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_planes", "uint8 pixels -> float32 planes in [-1, 1], in one pass.", -1, methods,
};

PyMODINIT_FUNC PyInit__planes(void)
{
    /* volatile: the two roundings of x / 127.5f - 1.0f, as numpy and torch make them, whatever
     * the compiler's contraction settings. */
    for (int value = 0; value < 256; value++) {
        volatile float scaled = (float)value / 127.5f;
        table[value] = scaled - 1.0f;
    }
    return PyModule_Create(&module_def);
}
