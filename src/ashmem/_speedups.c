/* ashmem._speedups: optional compiled twins of two pure-Python functions (_rights.py).
 *
 * recv_fds(sock, bufsize, ancbufsize, flags) -> (data, fds or None, msg_flags)
 *
 * One recvmsg(2) on sock's descriptor, as sock.recvmsg(bufsize, ancbufsize, flags) followed
 * by _rights.take_fds() would do it, without building the ancillary list, the address or
 * the 4-tuple that binder's hot path throws away.
 *
 * send_recv_fds(sock, data, send_flags, bufsize, ancbufsize, flags) -> the same
 *
 * send(2) of data, then the same receive, in one release of the GIL: a binder call's
 * request and its reply (the Proxy), or a reply and the next call (the service). A failed
 * send raises _rights.SendFailed (an OSError with the send's errno), so that a caller can
 * tell it from a receive that found nothing (BlockingIOError).
 *
 * _rights.py holds the pure-Python versions, which run when this module is not built (no C
 * compiler at install) or when ASHMEM_NO_SPEEDUPS is set; tests/test_speedups.py checks
 * that the two agree.
 *
 * What it trusts: nothing from the peer but the byte count and the control messages the
 * kernel formats. Every SCM_RIGHTS descriptor the kernel installed is returned or, when
 * building the result fails, closed. A socket with a Python timeout (settimeout(t), t > 0)
 * goes to the pure-Python version, which waits as sock.recvmsg does; in blocking and
 * non-blocking mode the one recvmsg(2) here behaves as CPython's. EINTR is retried after
 * running signal handlers (PEP 475), reading the socket's descriptor again first.
 *
 * Limits shared with the pure version: bufsize 0..16 MiB, ancbufsize 0..4096 (room for
 * SCM_MAX_FD descriptors and more). One difference: a receive of up to 64 KiB lands in a
 * per-thread buffer and is copied out after, so if that copy fails (MemoryError) the
 * message is lost, where CPython allocates first. One interpreter per process: the
 * fallback and the per-thread buffers are process-wide.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Room for the largest control buffer a caller may ask for: SCM_MAX_FD (253) descriptors. */
#define MAX_ANCBUF 4096
#define MAX_BUFSIZE (1 << 24)

/* Each thread receives into its own buffer of SMALL_BUFSIZE bytes (allocated at its first
 * receive, freed when it exits), then copies what came into a bytes object of that size:
 * cheaper than a bytes object of bufsize per receive, cut down after it. */
#define SMALL_BUFSIZE 65536
static pthread_key_t buffer_key;

static char *
thread_buffer(void)
{
    char *buf = pthread_getspecific(buffer_key);
    if (buf == NULL) {
        buf = malloc(SMALL_BUFSIZE);
        if (buf == NULL || pthread_setspecific(buffer_key, buf) != 0) {
            free(buf);
            PyErr_NoMemory();
            return NULL;
        }
    }
    return buf;
}

static void
close_all(const int *fds, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        close(fds[i]);
    }
}

/* The descriptors of every SCM_RIGHTS message in mh, copied to out (room for cap); their
 * number. A control message cut short by the kernel (MSG_CTRUNC) holds only whole ints. */
static Py_ssize_t
collect_fds(struct msghdr *mh, int *out, Py_ssize_t cap)
{
    Py_ssize_t count = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c != NULL; c = CMSG_NXTHDR(mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        if (c->cmsg_len < CMSG_LEN(0)) {
            break;
        }
        size_t len = c->cmsg_len - CMSG_LEN(0);
        char *end = (char *)mh->msg_control + mh->msg_controllen;
        char *data = (char *)CMSG_DATA(c);
        if (data > end) {
            break;
        }
        if ((size_t)(end - data) < len) {
            len = (size_t)(end - data);
        }
        for (size_t i = 0; i + sizeof(int) <= len && count < cap; i += sizeof(int)) {
            memcpy(&out[count++], data + i, sizeof(int));
        }
    }
    return count;
}

/* _rights._recv_fds and _rights._send_recv_fds, for sockets with a Python timeout, and
 * _rights.SendFailed (set_fallback). */
static PyObject *fallbacks[2] = {NULL, NULL};
static PyObject *send_failed = NULL;
static PyObject *str_fileno = NULL;
static PyObject *str_gettimeout = NULL;

/* 1 if sock has a timeout CPython would wait for with poll(2) (settimeout(t), t > 0),
 * 0 if not (blocking, or non-blocking), -1 on error. */
static int
has_timeout(PyObject *sock)
{
    PyObject *value = PyObject_CallMethodNoArgs(sock, str_gettimeout);
    if (value == NULL) {
        return -1;
    }
    int timed = 0;
    if (value != Py_None) {
        double t = PyFloat_AsDouble(value);
        if (t == -1.0 && PyErr_Occurred()) {
            Py_DECREF(value);
            return -1;
        }
        timed = t > 0.0;
    }
    Py_DECREF(value);
    return timed;
}

static PyObject *
call_fallback(int which, PyObject *const *args, Py_ssize_t nargs)
{
    if (fallbacks[which] == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ashmem._speedups: no fallback set for timed sockets");
        return NULL;
    }
    PyObject *func = Py_NewRef(fallbacks[which]); /* set_fallback may replace it meanwhile */
    PyObject *result = PyObject_Vectorcall(func, args, (size_t)nargs, NULL);
    Py_DECREF(func);
    return result;
}

/* Raise send_failed (set_fallback) with errno err: a send that failed, told apart from
 * the receive's errors. RuntimeError if set_fallback was never called. */
static void
raise_send_failed(int err)
{
    if (send_failed == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ashmem._speedups: set_fallback was never called");
        return;
    }
    PyObject *type = Py_NewRef(send_failed); /* set_fallback may replace it meanwhile */
    errno = err;
    PyErr_SetFromErrno(type);
    Py_DECREF(type);
}

/* socket_fd failed before the send went: a closed socket is a failed send (EBADF), as
 * sock.send would report it; any other error stays as it is. */
static void
closed_while_sending(void)
{
    if (PyErr_ExceptionMatches(PyExc_OSError)) {
        PyErr_Clear();
        raise_send_failed(EBADF);
    }
}

static int
socket_fd(PyObject *sock)
{
    PyObject *value = PyObject_CallMethodNoArgs(sock, str_fileno);
    if (value == NULL) {
        return -1;
    }
    long fd = PyLong_AsLong(value);
    Py_DECREF(value);
    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (fd < 0 || fd > INT_MAX) {
        /* A closed socket: what sock.recvmsg() raises for it. */
        errno = EBADF;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return (int)fd;
}

/* bufsize, ancbufsize and flags from three arguments; -1 with an exception set if bad. */
static int
parse_sizes(PyObject *const *args, Py_ssize_t *bufsize, Py_ssize_t *ancbufsize, int *flags)
{
    *bufsize = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (*bufsize == -1 && PyErr_Occurred()) {
        return -1;
    }
    *ancbufsize = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (*ancbufsize == -1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *flags_obj = PyNumber_Index(args[2]);
    if (flags_obj == NULL) {
        return -1;
    }
    long value = PyLong_AsLong(flags_obj);
    Py_DECREF(flags_obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*bufsize < 0 || *bufsize > MAX_BUFSIZE) {
        PyErr_Format(PyExc_ValueError, "bufsize must be 0..%d, not %zd", MAX_BUFSIZE, *bufsize);
        return -1;
    }
    if (*ancbufsize < 0 || *ancbufsize > MAX_ANCBUF) {
        PyErr_Format(PyExc_ValueError, "ancbufsize must be 0..%d, not %zd", MAX_ANCBUF,
                     *ancbufsize);
        return -1;
    }
    if (value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "flags out of range");
        return -1;
    }
    *flags = (int)value;
    return 0;
}

/* The work of recv_fds and send_recv_fds. With out != NULL, first send(2) those outlen
 * bytes with send_flags (in the same release of the GIL as the receive), and raise
 * send_failed (an OSError subclass) if that fails. A socket with a Python timeout goes
 * to the pure-Python twin: call_fallback(which, args, nargs). */
static PyObject *
receive(PyObject *sock, int which, PyObject *const *args, Py_ssize_t nargs, const char *out,
        Py_ssize_t outlen, int send_flags, Py_ssize_t bufsize, Py_ssize_t ancbufsize, int flags)
{
    int timed = has_timeout(sock);
    if (timed < 0) {
        return NULL;
    }
    if (timed) {
        return call_fallback(which, args, nargs);
    }
    int fd = socket_fd(sock);
    if (fd < 0) {
        if (out != NULL) {
            closed_while_sending();
        }
        return NULL;
    }

    /* Into this thread's buffer, or (larger) into a bytes object cut down after. */
    PyObject *data = NULL;
    char *target;
    if (bufsize <= SMALL_BUFSIZE) {
        target = thread_buffer();
        if (target == NULL) {
            return NULL;
        }
    } else {
        data = PyBytes_FromStringAndSize(NULL, bufsize);
        if (data == NULL) {
            return NULL;
        }
        target = PyBytes_AS_STRING(data);
    }
    union {
        struct cmsghdr align;
        char buf[MAX_ANCBUF];
    } control;
    struct iovec iov = {target, (size_t)bufsize};
    struct msghdr mh;
    ssize_t n = -1, sent = 0;
    int err = 0, send_err = 0;
    int sending = out != NULL;
    for (;;) {
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ancbufsize ? control.buf : NULL;
        mh.msg_controllen = (size_t)ancbufsize;
        Py_BEGIN_ALLOW_THREADS
        if (sending) {
            sent = send(fd, out, (size_t)outlen, send_flags);
            send_err = errno;
        }
        if (!sending || sent == outlen) {
            n = recvmsg(fd, &mh, flags);
            err = errno;
        }
        Py_END_ALLOW_THREADS
        if (sending) {
            if (sent < 0 && send_err != EINTR) {
                Py_XDECREF(data);
                errno = send_err;
                raise_send_failed(send_err);
                return NULL;
            }
            if (sent >= 0 && sent != outlen) {
                /* A SOCK_SEQPACKET or SOCK_DGRAM send is whole or fails: only a stream
                 * socket could take part of it, and these functions are not for those. */
                Py_XDECREF(data);
                errno = EMSGSIZE;
                raise_send_failed(EMSGSIZE);
                return NULL;
            }
            if (sent >= 0) {
                sending = 0;
            }
        }
        if (!sending && (n >= 0 || err != EINTR)) {
            break;
        }
        /* EINTR, in the send or the receive. */
        if (PyErr_CheckSignals() < 0) {
            Py_XDECREF(data);
            return NULL;
        }
        /* A handler may have closed the socket, or given it a timeout: look again, as
         * CPython reads the socket's descriptor again on every attempt. */
        timed = has_timeout(sock);
        fd = timed < 0 ? -1 : socket_fd(sock);
        if (timed != 0 || fd < 0) {
            Py_XDECREF(data);
            if (timed == 0 && sending) {
                closed_while_sending();
            }
            if (timed > 0) {
                if (sending) {
                    return call_fallback(which, args, nargs);
                }
                /* Sent already (or nothing to send): only the receive is left to do. */
                PyObject *rest[4] = {sock, args[nargs - 3], args[nargs - 2], args[nargs - 1]};
                return call_fallback(0, rest, 4);
            }
            return NULL;
        }
    }
    if (n < 0) {
        Py_XDECREF(data);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (n > bufsize) {
        /* MSG_TRUNC in flags: the kernel returns the datagram's real length. Only bufsize
         * bytes were stored; the rest never was (CPython, too, returns at most bufsize). */
        n = bufsize;
    }

    int fds[MAX_ANCBUF / sizeof(int)];
    Py_ssize_t nfds = mh.msg_controllen ? collect_fds(&mh, fds, MAX_ANCBUF / sizeof(int)) : 0;
    /* From here on the descriptors are ours: returned, or closed on any failure. */
    if (data == NULL) {
        data = PyBytes_FromStringAndSize(target, n);
        if (data == NULL) {
            close_all(fds, nfds);
            return NULL;
        }
    } else if (n != bufsize && _PyBytes_Resize(&data, n) < 0) {
        close_all(fds, nfds);
        return NULL;
    }
    PyObject *fdlist = Py_None;
    if (nfds) {
        fdlist = PyList_New(nfds);
        if (fdlist == NULL) {
            Py_DECREF(data);
            close_all(fds, nfds);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nfds; i++) {
            PyObject *item = PyLong_FromLong(fds[i]);
            if (item == NULL) {
                Py_DECREF(fdlist);
                Py_DECREF(data);
                close_all(fds, nfds);
                return NULL;
            }
            PyList_SET_ITEM(fdlist, i, item);
        }
    } else {
        Py_INCREF(fdlist);
    }
    PyObject *msg_flags = PyLong_FromLong(mh.msg_flags);
    PyObject *result = msg_flags ? PyTuple_New(3) : NULL;
    if (result == NULL) {
        Py_XDECREF(msg_flags);
        Py_DECREF(fdlist);
        Py_DECREF(data);
        close_all(fds, nfds);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, data);
    PyTuple_SET_ITEM(result, 1, fdlist);
    PyTuple_SET_ITEM(result, 2, msg_flags);
    return result;
}

static PyObject *
set_fallback(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *recv, *send_recv, *failed;
    if (!PyArg_ParseTuple(args, "OOO:set_fallback", &recv, &send_recv, &failed)) {
        return NULL;
    }
    if (!PyCallable_Check(recv) || !PyCallable_Check(send_recv) || !PyType_Check(failed) ||
        !PyType_IsSubtype((PyTypeObject *)failed, (PyTypeObject *)PyExc_OSError)) {
        PyErr_SetString(PyExc_TypeError,
                        "set_fallback(recv, send_recv, failed): two callables and an OSError "
                        "subclass");
        return NULL;
    }
    Py_XSETREF(fallbacks[0], Py_NewRef(recv));
    Py_XSETREF(fallbacks[1], Py_NewRef(send_recv));
    Py_XSETREF(send_failed, Py_NewRef(failed));
    Py_RETURN_NONE;
}

static PyObject *
recv_fds(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "recv_fds() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t bufsize, ancbufsize;
    int flags;
    if (parse_sizes(args + 1, &bufsize, &ancbufsize, &flags) < 0) {
        return NULL;
    }
    return receive(args[0], 0, args, nargs, NULL, 0, 0, bufsize, ancbufsize, flags);
}

static PyObject *
send_recv_fds(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "send_recv_fds() takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_CheckExact(args[1])) {
        PyErr_Format(PyExc_TypeError, "send_recv_fds() sends bytes, not %.100s",
                     Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    PyObject *flags_obj = PyNumber_Index(args[2]);
    if (flags_obj == NULL) {
        return NULL;
    }
    long send_flags = PyLong_AsLong(flags_obj);
    Py_DECREF(flags_obj);
    if (send_flags == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (send_flags < INT_MIN || send_flags > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "send_flags out of range");
        return NULL;
    }
    Py_ssize_t bufsize, ancbufsize;
    int flags;
    if (parse_sizes(args + 3, &bufsize, &ancbufsize, &flags) < 0) {
        return NULL;
    }
    /* args[1] is held by the caller for the whole call: its buffer stays put. */
    return receive(args[0], 1, args, nargs, PyBytes_AS_STRING(args[1]),
                   PyBytes_GET_SIZE(args[1]), (int)send_flags, bufsize, ancbufsize, flags);
}

static PyMethodDef methods[] = {
    {"set_fallback", set_fallback, METH_VARARGS,
     "set_fallback(recv, send_recv, failed): the pure-Python twins, called for a socket "
     "with a Python timeout, and the OSError subclass a failed send raises."},
    {"send_recv_fds", (PyCFunction)(void (*)(void))send_recv_fds, METH_FASTCALL,
     "send_recv_fds(sock, data, send_flags, bufsize, ancbufsize, flags) -> as recv_fds\n\n"
     "send(2) data, then recv_fds, in one call. A failed send raises the failed type given "
     "to set_fallback. See ashmem._rights.send_recv_fds."},
    {"recv_fds", (PyCFunction)(void (*)(void))recv_fds, METH_FASTCALL,
     "recv_fds(sock, bufsize, ancbufsize, flags) -> (data, fds or None, msg_flags)\n\n"
     "One recvmsg(2) on sock; the SCM_RIGHTS descriptors received, in order (None if "
     "none). See ashmem._rights.recv_fds."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ashmem._speedups", "Compiled twins of ashmem's hot paths.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (str_fileno == NULL) {
        if (pthread_key_create(&buffer_key, free) != 0) {
            PyErr_SetString(PyExc_OSError, "pthread_key_create failed");
            return NULL;
        }
        str_fileno = PyUnicode_InternFromString("fileno");
        str_gettimeout = PyUnicode_InternFromString("gettimeout");
        if (str_fileno == NULL || str_gettimeout == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&module);
}
