/* Coroutine-protocol pieces that several types share: PEP 479, send
 * results as Python sees them, throw() arguments, __await__/__iter__. */
#include "aiopyramid.h"

/* PEP 479: a StopIteration escaping a coroutine's body would read as its
 * return; raise RuntimeError from it instead.  Steals exc, returns the
 * exception to raise. */
PyObject *
stop_iteration_to_runtime_error(PyObject *exc)
{
    if (!PyErr_GivenExceptionMatches(exc, PyExc_StopIteration) &&
        !PyErr_GivenExceptionMatches(exc, PyExc_StopAsyncIteration))
        return exc;
    PyObject *err = PyObject_CallFunction(
        PyExc_RuntimeError, "s",
        PyErr_GivenExceptionMatches(exc, PyExc_StopIteration)
            ? "coroutine raised StopIteration"
            : "coroutine raised StopAsyncIteration");
    if (err == NULL) {
        Py_DECREF(exc);
        return exc_take();
    }
    PyException_SetCause(err, Py_NewRef(exc));
    PyException_SetContext(err, exc);
    return err;
}

/* The Python-level protocol on top of a PySendResult. */
PyObject *
send_result_to_python(PySendResult r, PyObject *result)
{
    if (r == PYGEN_NEXT)
        return result;
    if (r == PYGEN_RETURN) {
        if (result == Py_None) {
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            /* an instance: PyErr_SetObject would take a tuple for args */
            PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (stop != NULL) {
                PyErr_SetObject(PyExc_StopIteration, stop);
                Py_DECREF(stop);
            }
        }
        Py_DECREF(result);
    }
    return NULL;
}

/* throw(exc) / throw(type[, value[, tb]]) to an exception instance */
PyObject *
exception_from_throw_args(PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 3) {
        PyErr_Format(PyExc_TypeError, "throw expected 1 to 3 arguments, got %zd",
                     nargs);
        return NULL;
    }
    PyObject *typ = args[0];
    PyObject *val = nargs > 1 ? args[1] : Py_None;
    PyObject *tb = nargs > 2 ? args[2] : Py_None;
    PyObject *exc;
    if (PyExceptionInstance_Check(typ)) {
        if (val != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(typ);
    }
    else if (PyExceptionClass_Check(typ)) {
        if (PyExceptionInstance_Check(val) &&
            PyObject_TypeCheck(val, (PyTypeObject *)typ))
            exc = Py_NewRef(val);
        else if (val == Py_None)
            exc = PyObject_CallNoArgs(typ);
        else if (PyTuple_Check(val))
            exc = PyObject_Call(typ, val, NULL);
        else
            exc = PyObject_CallOneArg(typ, val);
        if (exc == NULL)
            return NULL;
        if (!PyExceptionInstance_Check(exc)) {
            PyErr_Format(PyExc_TypeError,
                         "calling %R should have returned an instance of "
                         "BaseException, not %s",
                         typ, Py_TYPE(exc)->tp_name);
            Py_DECREF(exc);
            return NULL;
        }
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from "
                     "BaseException, not %s", Py_TYPE(typ)->tp_name);
        return NULL;
    }
    if (tb != Py_None) {
        if (!PyTraceBack_Check(tb)) {
            Py_DECREF(exc);
            PyErr_SetString(PyExc_TypeError,
                            "throw() third argument must be a traceback object");
            return NULL;
        }
        PyException_SetTraceback(exc, tb);
    }
    return exc;
}

PyObject *
coro_return_self(PyObject *self)
{
    return Py_NewRef(self);
}

/* send(value) and __next__ of a coroutine type, through its am_send. */
PyObject *
coro_send(PyObject *self, PyObject *arg)
{
    PyObject *result;
    PySendResult r = Py_TYPE(self)->tp_as_async->am_send(self, arg, &result);
    return send_result_to_python(r, result);
}

PyObject *
coro_iternext(PyObject *self)
{
    PyObject *result;
    PySendResult r = Py_TYPE(self)->tp_as_async->am_send(self, Py_None,
                                                          &result);
    if (r == PYGEN_RETURN && result == Py_None) {
        Py_DECREF(result);
        return NULL; /* plain exhaustion */
    }
    return send_result_to_python(r, result);
}
