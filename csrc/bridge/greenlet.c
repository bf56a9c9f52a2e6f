/* BridgeGreenlet: a greenlet with a pointer to its current job, which
 * refuses a switch or throw from anyone but that job's driver. */
#include "bridge/bridge.h"

static int
bgreenlet_traverse(PyObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    return PyGreenlet_Type.tp_traverse(self, visit, arg);
}

void
bgreenlet_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyGreenlet_Type.tp_dealloc(self);
    Py_DECREF(tp);
}

/* Only a job's driver (spawn_step) may resume a greenlet that waits for it;
 * defined with Spawn below. */
static int refuse_foreign_resume(BridgeGreenlet *g);

static PyObject *
bgreenlet_switch(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (refuse_foreign_resume((BridgeGreenlet *)self) < 0)
        return NULL;
    return PyGreenlet_Switch((PyGreenlet *)self, args, kwargs);
}

static PyObject *
bgreenlet_throw(PyObject *self, PyObject *args)
{
    PyObject *typ = PyExc_GreenletExit, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 0, 3, &typ, &val, &tb))
        return NULL;
    if (refuse_foreign_resume((BridgeGreenlet *)self) < 0)
        return NULL;
    return PyGreenlet_Throw((PyGreenlet *)self, typ, val, tb);
}

static PyMethodDef bgreenlet_methods[] = {
    {"switch", (PyCFunction)(void (*)(void))bgreenlet_switch,
     METH_VARARGS | METH_KEYWORDS,
     "switch(*args, **kwargs): greenlet's switch, refused while the "
     "greenlet's job waits for its driver."},
    {"throw", bgreenlet_throw, METH_VARARGS,
     "throw([typ, [val, [tb]]]): greenlet's throw, refused while the "
     "greenlet's job waits for its driver."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot bgreenlet_slots[] = {
    {Py_tp_methods, bgreenlet_methods},
    {Py_tp_traverse, bgreenlet_traverse},
    {Py_tp_dealloc, bgreenlet_dealloc},
    {Py_tp_doc, "A pooled request greenlet of aiopyramid's bridge."},
    {0, NULL},
};

static PyType_Spec bgreenlet_spec = {
    .name = "aiopyramid._core.BridgeGreenlet",
    .basicsize = sizeof(BridgeGreenlet),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = bgreenlet_slots,
};

static int
refuse_foreign_resume(BridgeGreenlet *g)
{
    if (g->idle) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this greenlet is idle in aiopyramid's pool of "
                        "request greenlets: its job is over, and switching "
                        "to it or throwing into it is refused");
        return -1;
    }
    if (g->job == NULL || !g->job->waiting)
        return 0;
    PyErr_SetString(PyExc_RuntimeError,
                    "this greenlet runs an aiopyramid job that waits for a "
                    "coroutine: only its driver (the Task awaiting "
                    "spawn_greenlet) may resume it, when what it waits for "
                    "is done; switching to it or throwing into it from "
                    "elsewhere is refused (cancel the Task instead)");
    return -1;
}

int
bridge_greenlet_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    return add_type(module, &st->BridgeGreenletType, &bgreenlet_spec,
                    (PyObject *)&PyGreenlet_Type);
}
