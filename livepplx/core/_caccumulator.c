/*
 * livepplx.core._caccumulator: the per-token arithmetic of ChoiceStats, in C.
 *
 * The same operations as livepplx/core/accumulator.py's PyAccumulator, in the same order, on
 * IEEE doubles, with the libm exp() and log() that Python's math module calls: the results
 * are the same bit for bit (tests/test_accumulator.py checks it on random streams). Built
 * with -ffp-contract=off so that no compiler fuses a multiply and an add into one rounding
 * (an FMA) where Python rounds twice.
 *
 * Why C: in Python the update of every statistic costs ~13k instructions a token, a third
 * of what a raw reader spends on a chunk; here it costs a few hundred. The extension is
 * optional: without a compiler livepplx runs PyAccumulator, with the same results.
 *
 * The state lives in the object (members with the attribute names the Python twin
 * uses), so ChoiceStats' properties read either alike. The four rings of running sums
 * are memoryviews of doubles made by ChoiceStats; a buffer of each is held from the
 * assignment on (the memoryview cannot be released or its array resized meanwhile).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>

typedef struct {
    Py_buffer view;  /* view.obj == NULL: not assigned */
    PyObject *obj;   /* what was assigned, returned as is */
} Ring;

typedef struct {
    PyObject_HEAD
    Py_ssize_t tokens, censored, skipped, topk_positions, hn, wsize, wpos, gsize, gpos;
    double last_logprob, min_logprob, entropy, confidence, lowest, sum, comp, ema, alpha, vmean, m2;
    double hsum, hcomp, gsum, gcomp;
    PyObject *alts;
    Ring wsums, wcomps, gsums, gcomps;
} Accumulator;

static PyObject *s_status, *s_logprob, *s_alternatives; /* interned attribute names */
static PyObject *OK, *SKIPPED;                          /* livepplx.core.tokens.OK, .SKIPPED */

static PyObject *
Accumulator_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args; /* the attributes are set by ChoiceStats.__init__ */
    (void)kwds;
    Accumulator *self = (Accumulator *)type->tp_alloc(type, 0); /* zeroed */
    if (self == NULL)
        return NULL;
    self->min_logprob = Py_HUGE_VAL;
    self->last_logprob = self->entropy = self->confidence = self->lowest = self->ema = Py_NAN;
    self->alts = PyTuple_New(0);
    if (self->alts == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
ring_clear(Ring *r)
{
    if (r->view.obj != NULL)
        PyBuffer_Release(&r->view);
    Py_CLEAR(r->obj);
}

/* The objects held (the newest alternatives, the rings) can be any object a caller
 * assigns: the collector sees them, so a cycle through them is freed. */
static int
Accumulator_traverse(Accumulator *self, visitproc visit, void *arg)
{
    Py_VISIT(self->alts);
    Py_VISIT(self->wsums.obj);
    Py_VISIT(self->wcomps.obj);
    Py_VISIT(self->gsums.obj);
    Py_VISIT(self->gcomps.obj);
    return 0;
}

static int
Accumulator_clear(Accumulator *self)
{
    Py_CLEAR(self->alts);
    ring_clear(&self->wsums);
    ring_clear(&self->wcomps);
    ring_clear(&self->gsums);
    ring_clear(&self->gcomps);
    return 0;
}

static void
Accumulator_dealloc(Accumulator *self)
{
    PyObject_GC_UnTrack(self);
    Accumulator_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- the rings: assigned memoryviews of doubles ------------------------------------- */

static PyObject *
ring_get(Accumulator *self, void *closure)
{
    Ring *r = (Ring *)((char *)self + (Py_ssize_t)closure);
    if (r->obj == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the ring is not set (ChoiceStats.__init__ sets it)");
        return NULL;
    }
    return Py_NewRef(r->obj);
}

static int
ring_set(Accumulator *self, PyObject *value, void *closure)
{
    Ring *r = (Ring *)((char *)self + (Py_ssize_t)closure);
    Py_buffer view;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "a ring cannot be deleted");
        return -1;
    }
    if (PyObject_GetBuffer(value, &view, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (view.itemsize != sizeof(double) || view.format == NULL || strcmp(view.format, "d") != 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "a ring must be a writable buffer of doubles (array('d'))");
        return -1;
    }
    Ring old = *r; /* let go of last: releasing it may run code that assigns this ring again */
    r->view = view;
    r->obj = Py_NewRef(value);
    ring_clear(&old);
    return 0;
}

#define RING(field) (void *)offsetof(Accumulator, field)

static PyGetSetDef Accumulator_getset[] = {
    {"_wsums", (getter)ring_get, (setter)ring_set, "running sums S(n) of the window's ring", RING(wsums)},
    {"_wcomps", (getter)ring_get, (setter)ring_set, "their compensations", RING(wcomps)},
    {"_gsums", (getter)ring_get, (setter)ring_set, "running sums of the confidences' ring", RING(gsums)},
    {"_gcomps", (getter)ring_get, (setter)ring_set, "their compensations", RING(gcomps)},
    {NULL},
};

#define MEMBER(name, type, field, doc) {name, type, offsetof(Accumulator, field), 0, doc}

static PyMemberDef Accumulator_members[] = {
    MEMBER("tokens", T_PYSSIZET, tokens, "tokens counted in the statistics (OK and CENSORED)"),
    MEMBER("censored", T_PYSSIZET, censored, "tokens whose logprob was a placeholder (-9999, -inf, prob 0)"),
    MEMBER("skipped", T_PYSSIZET, skipped, "tokens whose logprob was missing or not a logprob (null, NaN, positive)"),
    MEMBER("topk_positions", T_PYSSIZET, topk_positions, "positions that listed alternatives"),
    MEMBER("last_logprob", T_DOUBLE, last_logprob, "the newest counted logprob"),
    MEMBER("entropy", T_DOUBLE, entropy, "the newest position's top-k entropy"),
    MEMBER("confidence", T_DOUBLE, confidence, "the newest position's DeepConf token confidence"),
    MEMBER("lowest_group_confidence", T_DOUBLE, lowest, "the lowest DeepConf group confidence so far"),
    MEMBER("_min_logprob", T_DOUBLE, min_logprob, NULL),
    MEMBER("_alts", T_OBJECT_EX, alts, NULL),
    MEMBER("_sum", T_DOUBLE, sum, NULL),
    MEMBER("_comp", T_DOUBLE, comp, NULL),
    MEMBER("_ema", T_DOUBLE, ema, NULL),
    MEMBER("_alpha", T_DOUBLE, alpha, NULL),
    MEMBER("_vmean", T_DOUBLE, vmean, NULL),
    MEMBER("_m2", T_DOUBLE, m2, NULL),
    MEMBER("_wsize", T_PYSSIZET, wsize, NULL),
    MEMBER("_wpos", T_PYSSIZET, wpos, NULL),
    MEMBER("_hn", T_PYSSIZET, hn, NULL),
    MEMBER("_hsum", T_DOUBLE, hsum, NULL),
    MEMBER("_hcomp", T_DOUBLE, hcomp, NULL),
    MEMBER("_gsize", T_PYSSIZET, gsize, NULL),
    MEMBER("_gpos", T_PYSSIZET, gpos, NULL),
    MEMBER("_gsum", T_DOUBLE, gsum, NULL),
    MEMBER("_gcomp", T_DOUBLE, gcomp, NULL),
    {NULL},
};

/* -- the update ------------------------------------------------------------------------ */

/* Python's math.exp: an OverflowError where the result overflows a finite argument. */
static int
checked_exp(double a, double *p)
{
    double r = exp(a);
    if (isinf(r) && isfinite(a)) {
        PyErr_SetString(PyExc_OverflowError, "math range error");
        return -1;
    }
    *p = r;
    return 0;
}

/* The counters add() increments: one at its largest value was assigned, not counted (and
 * one more would overflow). */
static int
counters(Accumulator *self)
{
    if (self->tokens == PY_SSIZE_T_MAX || self->censored == PY_SSIZE_T_MAX || self->skipped == PY_SSIZE_T_MAX
            || self->topk_positions == PY_SSIZE_T_MAX || self->hn == PY_SSIZE_T_MAX) {
        PyErr_SetString(PyExc_ValueError, "a counter is at its largest value");
        return -1;
    }
    return 0;
}

/* The rings' memory, checked against the window sizes (both attributes can be set). */
static int
rings(Accumulator *self, double **ws, double **wc, double **gs, double **gc)
{
    Ring *all[4] = {&self->wsums, &self->wcomps, &self->gsums, &self->gcomps};
    Py_ssize_t size[4] = {self->wsize, self->wsize, self->gsize, self->gsize};
    for (int j = 0; j < 4; j++) {
        if (all[j]->obj == NULL) {
            PyErr_SetString(PyExc_AttributeError, "the rings are not set (ChoiceStats.__init__ sets them)");
            return -1;
        }
        /* window + 1 slots, compared without computing window + 1 (no overflow, whatever was assigned) */
        if (size[j] < 1 || size[j] >= all[j]->view.len / (Py_ssize_t)sizeof(double)) {
            PyErr_SetString(PyExc_ValueError, "a ring is shorter than its window + 1 slots");
            return -1;
        }
    }
    if (counters(self) < 0)
        return -1;
    if (self->wpos < 0 || self->wpos > self->wsize || self->gpos < 0 || self->gpos > self->gsize) {
        PyErr_SetString(PyExc_ValueError, "a ring position is outside its window");
        return -1;
    }
    *ws = all[0]->view.buf;
    *wc = all[1]->view.buf;
    *gs = all[2]->view.buf;
    *gc = all[3]->view.buf;
    return 0;
}

/* One token: 0, or -1 with an exception set, having counted nothing (a token of the wrong
 * types, which livepplx.core.tokens.make_token never makes). Everything that can run Python
 * code (reading the token's fields, a value's __float__) is done before the first write,
 * and the rings' memory is looked up after it: code that reassigns a ring meanwhile
 * cannot make this write into a released buffer. The alternatives' sums come first; they
 * do not depend on the logprob's statistics, so the arithmetic is the Python twin's. */
static int
add(Accumulator *self, PyObject *token)
{
    PyObject *status = PyObject_GetAttr(token, s_status);
    int censored = 0;
    if (status == NULL)
        return -1;
    if (status != OK) {
        if (status == SKIPPED) {
            Py_DECREF(status);
            if (counters(self) < 0)
                return -1;
            self->skipped++;
            return 0;
        }
        censored = PyObject_IsTrue(status);
        if (censored < 0) {
            Py_DECREF(status);
            return -1;
        }
    }
    Py_DECREF(status);
    PyObject *value = PyObject_GetAttr(token, s_logprob);
    if (value == NULL)
        return -1;
    double x = PyFloat_AsDouble(value);
    Py_DECREF(value);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    PyObject *alts = PyObject_GetAttr(token, s_alternatives);
    if (alts == NULL)
        return -1;
    /* A tuple as it is (its items cannot change); any other sequence copied into one. */
    PyObject *items = alts == Py_None || PyTuple_CheckExact(alts) ? Py_NewRef(alts) : PySequence_Tuple(alts);
    if (items == NULL) {
        Py_DECREF(alts);
        return -1;
    }
    Py_ssize_t len = items == Py_None ? 0 : PyTuple_GET_SIZE(items);
    double total = 0.0, p_log_p = 0.0, listed = 0.0;
    for (Py_ssize_t j = 0; j < len; j++) {
        double a = PyFloat_AsDouble(PyTuple_GET_ITEM(items, j)), p;
        if ((a == -1.0 && PyErr_Occurred()) || checked_exp(a, &p) < 0) {
            Py_DECREF(items);
            Py_DECREF(alts);
            return -1;
        }
        total += p;
        p_log_p += p * a;
        listed += a;
    }
    Py_DECREF(items);
    double *ws, *wc, *gs, *gc;
    if (rings(self, &ws, &wc, &gs, &gc) < 0) {
        Py_DECREF(alts);
        return -1;
    }

    /* No Python code runs from here on until the last write: the previous alternatives are
     * let go of at the very end (their deallocation may run a __del__). */
    PyObject *old_alts = NULL;
    if (censored)
        self->censored++;
    Py_ssize_t n = self->tokens + 1;
    self->tokens = n;
    self->last_logprob = x;
    if (x < self->min_logprob)
        self->min_logprob = x;
    /* The running sum (Neumaier); counted logprobs are <= 0, so the larger magnitude is
     * the smaller value. */
    double s = self->sum, t = s + x;
    double c = self->comp + (s <= x ? (s - t) + x : (x - t) + s);
    self->sum = t;
    self->comp = c;
    Py_ssize_t i = self->wpos + 1;
    if (i > self->wsize)
        i = 0;
    self->wpos = i;
    ws[i] = t;
    wc[i] = c;
    double y = self->ema;
    self->ema = y == y ? y + self->alpha * (x - y) : x;
    double m = self->vmean, d = x - m;
    m += d / (double)n;
    self->vmean = m;
    self->m2 += d * (x - m);
    if (len == 0) {
        Py_DECREF(alts);
        return 0;
    }
    /* One position of listed alternatives: the entropy's sums, the confidence, the group window's. */
    old_alts = self->alts;
    self->alts = alts; /* takes the reference */
    Py_ssize_t k = self->topk_positions + 1;
    self->topk_positions = k;
    double h = total > 0.0 ? log(total) - p_log_p / total : Py_NAN;
    self->entropy = h;
    if (h == h) {
        self->hn++;
        s = self->hsum;
        t = s + h;
        self->hcomp += s >= h ? (s - t) + h : (h - t) + s;
        self->hsum = t;
    }
    x = -listed / (double)len;
    self->confidence = x;
    s = self->gsum;
    t = s + x;
    c = self->gcomp + (s >= x ? (s - t) + x : (x - t) + s);
    self->gsum = t;
    self->gcomp = c;
    Py_ssize_t size = self->gsize;
    i = self->gpos + 1;
    if (i > size)
        i = 0;
    self->gpos = i;
    gs[i] = t;
    gc[i] = c;
    if (k < size) {
        self->lowest = (t + c) / (double)k;
    }
    else {
        i = i < size ? i + 1 : 0;
        double g = ((t - gs[i]) + (c - gc[i])) / (double)size;
        if (k == size || g < self->lowest)
            self->lowest = g;
    }
    Py_XDECREF(old_alts);
    return 0;
}

static PyObject *
Accumulator_update(Accumulator *self, PyObject *token)
{
    if (add(self, token) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Accumulator_update_many(Accumulator *self, PyObject *tokens)
{
    PyObject *seq = PySequence_Fast(tokens, "update_many() takes an iterable of tokens");
    if (seq == NULL)
        return NULL;
    /* A list can change while a token's code runs: its size is read each time, and the
     * token is held while it is counted. */
    for (Py_ssize_t j = 0; j < PySequence_Fast_GET_SIZE(seq); j++) {
        PyObject *token = Py_NewRef(PySequence_Fast_GET_ITEM(seq, j));
        int failed = add(self, token) < 0;
        Py_DECREF(token);
        if (failed) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

static PyMethodDef Accumulator_methods[] = {
    {"update", (PyCFunction)Accumulator_update, METH_O,
     "update(token)\n--\n\nAdd one token (O(1): the work does not depend on how many came before)."},
    {"update_many", (PyCFunction)Accumulator_update_many, METH_O,
     "update_many(tokens)\n--\n\nAdd tokens in order: update() token by token."},
    {NULL},
};

static PyTypeObject AccumulatorType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "livepplx.core._caccumulator.Accumulator",
    .tp_doc = "The running sums behind ChoiceStats, updated in C (see livepplx.core.accumulator).",
    .tp_basicsize = sizeof(Accumulator),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Accumulator_traverse,
    .tp_clear = (inquiry)Accumulator_clear,
    .tp_free = PyObject_GC_Del,
    .tp_new = Accumulator_new,
    .tp_dealloc = (destructor)Accumulator_dealloc,
    .tp_methods = Accumulator_methods,
    .tp_members = Accumulator_members,
    .tp_getset = Accumulator_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "livepplx.core._caccumulator",
    .m_doc = "The per-token arithmetic of ChoiceStats, in C (optional; livepplx.core.accumulator has its Python twin).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__caccumulator(void)
{
    PyObject *m, *tokens;
    s_status = PyUnicode_InternFromString("status");
    s_logprob = PyUnicode_InternFromString("logprob");
    s_alternatives = PyUnicode_InternFromString("alternatives");
    if (s_status == NULL || s_logprob == NULL || s_alternatives == NULL)
        return NULL;
    tokens = PyImport_ImportModule("livepplx.core.tokens");
    if (tokens == NULL)
        return NULL;
    OK = PyObject_GetAttrString(tokens, "OK");
    SKIPPED = PyObject_GetAttrString(tokens, "SKIPPED");
    Py_DECREF(tokens);
    if (OK == NULL || SKIPPED == NULL)
        return NULL;
    if (PyType_Ready(&AccumulatorType) < 0)
        return NULL;
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AccumulatorType);
    if (PyModule_AddObject(m, "Accumulator", (PyObject *)&AccumulatorType) < 0) {
        Py_DECREF(&AccumulatorType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
