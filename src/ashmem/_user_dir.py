"""This user's private ashmem directory, where names live: binder services, compat names.

The directory is ``$XDG_RUNTIME_DIR/ashmem`` when ``$XDG_RUNTIME_DIR`` is a directory this
user owns, else ``<tempdir>/ashmem-<uid>``. It is created mode 0700 and checked before every
use: a real directory (not a symlink), owned by this user, writable by nobody else; otherwise
``PermissionError`` says what is wrong. A name found there was therefore put there by this
user (or root), never planted by someone else.

Below the region layers: it imports nothing from ashmem, so any layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile

__all__ = ["ensure_private", "user_directory"]


def ensure_private(path: str) -> str:
    """Create ``path`` (mode 0700) if missing and check that only this user controls it;
    returns ``path``. Group or other read/search bits are removed; a directory that others
    could write to, that belongs to someone else, or that is not a directory is refused.

    >>> import os, stat, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = ensure_private(os.path.join(tmp, "names"))
    ...     stat.S_IMODE(os.stat(path).st_mode) == 0o700
    True
    """
    uid = os.geteuid()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(
            errno.EPERM,
            f"{path} is not a directory (a symlink or a file someone put there); remove it "
            "or set XDG_RUNTIME_DIR",
        )
    if st.st_uid != uid:
        raise PermissionError(
            errno.EPERM,
            f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}): its owner could "
            "impersonate your services and names; remove it or set XDG_RUNTIME_DIR",
        )
    if st.st_mode & 0o022:
        raise PermissionError(
            errno.EPERM,
            f"{path} is writable by others (mode {st.st_mode & 0o777:o}): anyone could plant "
            "a fake service or name there; remove it",
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def user_directory(*subdirectories: str) -> str:
    """This user's ashmem directory, or a subdirectory of it, each level created (mode 0700)
    and checked with ``ensure_private``.

    >>> import os, stat
    >>> stat.S_IMODE(os.stat(user_directory()).st_mode)
    448
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = None
    if runtime and os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            base = os.path.join(runtime, "ashmem")
    if base is None:
        base = os.path.join(tempfile.gettempdir(), f"ashmem-{os.geteuid()}")
    path = ensure_private(base)
    for name in subdirectories:
        path = ensure_private(os.path.join(path, name))
    return path
