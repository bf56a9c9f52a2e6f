/* aiopyramid._core: multi-phase init and module state. */
#include "aiopyramid.h"

#define STATE_OBJECTS(X)                                                     \
    X(BridgeGreenletType) X(SpawnType) X(DelegateType) X(SynchronizedType)    \
    X(CoroutineFunctionType) X(ThreadCallType) X(MappedViewType)              \
    X(WorkQueueType) X(CompletionsType) X(completers) X(cf_thread)            \
    X(queue_empty)                                                            \
    X(ScopeError) X(ConfigurationError) X(GreenletExit) X(CancelledError)     \
    X(gr_context_descr)   \
    X(get_running_loop) X(asyncio_run)            \
    X(types_coroutine) X(update_wrapper) X(is_coroutine_marker)               \
    X(inspect_marker) X(iscoroutinefunction) X(request_loop)                  \
    X(waiting_thread) X(in_synchronized)                                      \
    X(worker)                                          \
    X(str_throw) X(str_close) X(str_pool_key)                     \
    X(str_add_done_callback) X(str_call_soon) X(str_run_in_executor)          \
    X(str_blocking) X(str_set_result) X(str_set_exception)                   \
    X(str_result) X(str_push) X(str_pop) X(str_registry) X(str_request)       \
    X(str_view_attr) X(str_make_body_seekable)                    \
    X(str_content_length) X(str_transfer_encoding) X(str_app_iter)           \
    X(str_foreign_wait)                                                      \
    X(executor_strs) X(threadlocal_manager) X(tl_class) X(tl_stack)           \
    X(HttpServerType) X(HttpProtocolType) X(HttpRequestType) X(HttpInputType) \
    X(FileWrapperType) X(http_strs) X(http_methods) X(http_run) X(io_base)  \
    X(io_bytesio)                                                            \
    X(WebSocketType) X(WebsocketResultType) X(WebsocketHandshakeError)       \
    X(WebsocketClosed) X(ws_sha1) X(ws_strs) X(ws_none_result)

static int
module_traverse(PyObject *module, visitproc visit, void *arg)
{
    modstate *st = state_of_module(module);
#define VISIT(name) Py_VISIT(st->name);
    STATE_OBJECTS(VISIT)
#undef VISIT
    return 0;
}

static int
module_clear(PyObject *module)
{
    modstate *st = state_of_module(module);
#define CLEAR(name) Py_CLEAR(st->name);
    STATE_OBJECTS(CLEAR)
#undef CLEAR
    return 0;
}

static void
module_free(void *module)
{
    module_clear((PyObject *)module);
}

static int
intern_strings(modstate *st)
{
#define INTERN(field, text)                                  \
    if ((st->field = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    INTERN(str_throw, "throw")
    INTERN(str_close, "close")
    INTERN(str_pool_key, "aiopyramid._core.greenlet_pool")
    INTERN(str_add_done_callback, "add_done_callback")
    INTERN(str_call_soon, "call_soon")
    INTERN(str_run_in_executor, "run_in_executor")
    INTERN(str_blocking, "_asyncio_future_blocking")
    INTERN(str_set_result, "set_result")
    INTERN(str_set_exception, "set_exception")
    INTERN(str_result, "result")
    INTERN(str_push, "push")
    INTERN(str_pop, "pop")
    INTERN(str_registry, "registry")
    INTERN(str_request, "request")
    INTERN(str_view_attr, "__view__")
    INTERN(str_make_body_seekable, "make_body_seekable")
    INTERN(str_content_length, "CONTENT_LENGTH")
    INTERN(str_transfer_encoding, "HTTP_TRANSFER_ENCODING")
    INTERN(str_app_iter, "_app_iter")
    INTERN(str_foreign_wait, "_aiopyramid_wait")
#undef INTERN
    return 0;
}

/* A heap type of the module (`base` may be NULL), kept in *slot and added to
 * the module under its name. */
int
add_type(PyObject *module, PyTypeObject **slot, PyType_Spec *spec,
         PyObject *base)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(module, spec, base);
    if (*slot == NULL)
        return -1;
    return PyModule_AddType(module, *slot);
}

static int
module_exec(PyObject *module)
{
    modstate *st = state_of_module(module);
    if (intern_strings(st) < 0)
        return -1;
    if (bridge_init(module, st) < 0)
        return -1;
    if (mappers_init(module, st) < 0)
        return -1;
    if (http_init(module, st) < 0)
        return -1;
    if (websocket_init(module, st) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* greenlet pools and the threadlocal manager are per interpreter, but
     * greenlet itself supports only the main one */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

PyModuleDef aiopyramid_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aiopyramid._core",
    .m_doc = "The C core of aiopyramid: the greenlet/asyncio bridge, the "
             "view mappers and the HTTP/1.1 server.",
    .m_size = sizeof(modstate),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    /* each file adds its own functions (PyModule_AddFunctions) */
    return PyModuleDef_Init(&aiopyramid_module);
}
