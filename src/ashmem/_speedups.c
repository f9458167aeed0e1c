/* ashmem._speedups: an optional compiled twin of one pure-Python function.
 *
 * recv_fds(sock, bufsize, ancbufsize, flags) -> (data, fds or None, msg_flags)
 *
 * One recvmsg(2) on sock's descriptor, as sock.recvmsg(bufsize, ancbufsize, flags) followed
 * by _rights.take_fds() would do it, without building the ancillary list, the address or
 * the 4-tuple that binder's hot path throws away. _rights.py holds the pure-Python
 * version, which runs when this module is not built (no C compiler at install) or when
 * ASHMEM_NO_SPEEDUPS is set; tests/test_speedups.py checks that the two agree.
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

/* _rights._recv_fds, for sockets with a Python timeout (set_fallback). */
static PyObject *fallback = NULL;
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
call_fallback(PyObject *const *args, Py_ssize_t nargs)
{
    if (fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "recv_fds: no fallback set for timed sockets");
        return NULL;
    }
    PyObject *func = Py_NewRef(fallback); /* set_fallback may replace it meanwhile */
    PyObject *result = PyObject_Vectorcall(func, args, (size_t)nargs, NULL);
    Py_DECREF(func);
    return result;
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

static PyObject *
recv_fds(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "recv_fds() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t bufsize = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (bufsize == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t ancbufsize = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (ancbufsize == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *flags_obj = PyNumber_Index(args[3]);
    if (flags_obj == NULL) {
        return NULL;
    }
    long flags = PyLong_AsLong(flags_obj);
    Py_DECREF(flags_obj);
    if (flags == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (bufsize < 0 || bufsize > MAX_BUFSIZE) {
        PyErr_Format(PyExc_ValueError, "bufsize must be 0..%d, not %zd", MAX_BUFSIZE, bufsize);
        return NULL;
    }
    if (ancbufsize < 0 || ancbufsize > MAX_ANCBUF) {
        PyErr_Format(PyExc_ValueError, "ancbufsize must be 0..%d, not %zd", MAX_ANCBUF,
                     ancbufsize);
        return NULL;
    }
    if (flags < INT_MIN || flags > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "flags out of range");
        return NULL;
    }
    int timed = has_timeout(args[0]);
    if (timed < 0) {
        return NULL;
    }
    if (timed) {
        return call_fallback(args, nargs);
    }
    int fd = socket_fd(args[0]);
    if (fd < 0) {
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
    ssize_t n;
    int err;
    for (;;) {
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = &iov;
        mh.msg_iovlen = 1;
        mh.msg_control = ancbufsize ? control.buf : NULL;
        mh.msg_controllen = (size_t)ancbufsize;
        Py_BEGIN_ALLOW_THREADS
        n = recvmsg(fd, &mh, (int)flags);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0 || err != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            Py_XDECREF(data);
            return NULL;
        }
        /* A handler may have closed the socket, or given it a timeout: look again, as
         * CPython reads the socket's descriptor again on every attempt. */
        timed = has_timeout(args[0]);
        fd = timed < 0 ? -1 : socket_fd(args[0]);
        if (timed != 0 || fd < 0) {
            Py_XDECREF(data);
            if (timed > 0) {
                return call_fallback(args, nargs);
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
set_fallback(PyObject *Py_UNUSED(module), PyObject *func)
{
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "set_fallback() needs a callable");
        return NULL;
    }
    Py_INCREF(func);
    Py_XSETREF(fallback, func);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"set_fallback", set_fallback, METH_O,
     "set_fallback(func): what recv_fds calls for a socket with a Python timeout."},
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
