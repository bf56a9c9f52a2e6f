/* The bridge's part of the module init: each file's types and
 * functions, the objects the bridge imports once, and helpers for both. */
#include "bridge/bridge.h"

PyObject *
import_attr(const char *module, const char *name, int optional)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *r;
    if (optional) {
        if (PyObject_GetOptionalAttrString(m, name, &r) < 0)
            r = NULL;
    }
    else {
        r = PyObject_GetAttrString(m, name);
    }
    Py_DECREF(m);
    return r;
}

int
bridge_init(PyObject *module, modstate *st)
{
    if (bridge_import_greenlet() < 0)
        return -1;
    if (bridge_greenlet_init(module, st) < 0 ||
        bridge_pool_init(module, st) < 0 ||
        bridge_spawn_init(module, st) < 0 ||
        bridge_worker_init(module, st) < 0 ||
        bridge_await_init(module, st) < 0 ||
        bridge_delegate_init(module, st) < 0 ||
        bridge_decorators_init(module, st) < 0 ||
        bridge_executor_init(module, st) < 0)
        return -1;

    st->GreenletExit = Py_NewRef(PyExc_GreenletExit);
    st->gr_context_descr = PyObject_GetAttrString((PyObject *)&PyGreenlet_Type,
                                                  "gr_context");
    if (st->gr_context_descr == NULL)
        return -1;
    if (Py_TYPE(st->gr_context_descr)->tp_descr_set == NULL) {
        PyErr_SetString(PyExc_ImportError,
                        "greenlet.gr_context is not settable: greenlet >= 3 "
                        "is required");
        return -1;
    }
    if ((st->ScopeError = import_attr("aiopyramid.exceptions", "ScopeError",
                                      0)) == NULL ||
        (st->ConfigurationError = import_attr("pyramid.exceptions",
                                              "ConfigurationError", 0)) == NULL ||
        (st->get_running_loop = import_attr("asyncio", "_get_running_loop",
                                            0)) == NULL ||
        (st->asyncio_run = import_attr("asyncio", "run", 0)) == NULL ||
        (st->CancelledError = import_attr("asyncio", "CancelledError",
                                          0)) == NULL ||
        (st->types_coroutine = import_attr("types", "coroutine", 0)) == NULL ||
        (st->update_wrapper = import_attr("functools", "update_wrapper",
                                          0)) == NULL ||
        (st->iscoroutinefunction = import_attr("inspect", "iscoroutinefunction",
                                               0)) == NULL)
        return -1;
    st->is_coroutine_marker = import_attr("asyncio.coroutines", "_is_coroutine", 1);
    if (st->is_coroutine_marker == NULL && PyErr_Occurred())
        return -1;
    st->inspect_marker = import_attr("inspect", "_is_coroutine_mark", 1);
    if (st->inspect_marker == NULL && PyErr_Occurred())
        return -1;
    st->request_loop = PyContextVar_New("aiopyramid_request_loop", NULL);
    if (st->request_loop == NULL ||
        PyModule_AddObjectRef(module, "_request_loop", st->request_loop) < 0)
        return -1;
    st->waiting_thread = PyContextVar_New("aiopyramid_waiting_thread", NULL);
    if (st->waiting_thread == NULL ||
        PyModule_AddObjectRef(module, "_waiting_thread",
                              st->waiting_thread) < 0)
        return -1;
    st->in_synchronized = PyContextVar_New("aiopyramid_in_synchronized", NULL);
    if (st->in_synchronized == NULL ||
        PyModule_AddObjectRef(module, "_in_synchronized",
                              st->in_synchronized) < 0)
        return -1;

    /* asyncio.iscoroutine() and create_task() accept what spawn_greenlet
     * and use_executor return */
    PyObject *abc = import_attr("collections.abc", "Coroutine", 0);
    if (abc == NULL)
        return -1;
    PyObject *r = PyObject_CallMethod(abc, "register", "O", st->SpawnType);
    Py_XDECREF(r);
    if (r != NULL) {
        r = PyObject_CallMethod(abc, "register", "O", st->DelegateType);
        Py_XDECREF(r);
    }
    Py_DECREF(abc);
    return r == NULL ? -1 : 0;
}
