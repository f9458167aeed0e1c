"""Binder-like IPC: services by name, ``transact(code, Parcel)`` with descriptors, the
caller's kernel credentials, death notices, and large payloads through shared memory.

This is how unrelated processes exchange regions, the way an Android app hands a
MemoryFile's descriptor to a bound service::

    # service process
    class Greeter(Binder):
        def on_transact(self, code, data, reply, flags):
            with data.read_shared_memory() as shm, shm.map_read_only() as m:
                text = bytes(m[: data.read_int()]).decode()
            reply.write_string(f"hello from pid {os.getpid()} to uid {get_calling_uid()}")
            return True

    serve("greeter", Greeter())

    # client process
    proxy = get_service("greeter")
    data, reply = Parcel(), Parcel()
    data.write_shared_memory(memory_file); data.write_int(length)
    proxy.transact(FIRST_CALL_TRANSACTION, data, reply)
    print(reply.read_string())

Layers: ``Parcel`` (``_parcel``: the typed, versioned encoding) travels over the wire
protocol (``_wire``: one SOCK_SEQPACKET datagram per message, descriptors as SCM_RIGHTS,
large Parcels spilled into sealed regions); ``Proxy`` (``_proxy``) is the client side,
``Binder`` (``_binder``) and the thread pool (``_pool``) the service side; the directory
(``_directory``) publishes and finds services by name, one socket per service. Every peer is
hostile: ``_gate`` checks each connection right after ``accept`` against the endpoint's
policy and the limits of ``_limits`` (``set_limits``); ``_nested`` runs a call back into the
calling process on its waiting thread.

>>> from ashmem.binder import Binder, Parcel, add_service, get_service
>>> class Echo(Binder):
...     def on_transact(self, code, data, reply, flags):
...         reply.write_string(data.read_string())
...         return True
>>> with add_service("doctest.package", Echo()), get_service("doctest.package") as proxy:
...     data, reply = Parcel(), Parcel()
...     data.write_string("ping")
...     proxy.transact(1, data, reply), reply.read_string()
(True, 'ping')
"""

from ._binder import FIRST_CALL_TRANSACTION as FIRST_CALL_TRANSACTION
from ._binder import FLAG_ONEWAY as FLAG_ONEWAY
from ._binder import INTERFACE_TRANSACTION as INTERFACE_TRANSACTION
from ._binder import LAST_CALL_TRANSACTION as LAST_CALL_TRANSACTION
from ._binder import PING_TRANSACTION as PING_TRANSACTION
from ._binder import AllowList as AllowList
from ._binder import Binder as Binder
from ._binder import Credentials as Credentials
from ._binder import Policy as Policy
from ._binder import clear_calling_identity as clear_calling_identity
from ._binder import get_calling_credentials as get_calling_credentials
from ._binder import get_calling_gid as get_calling_gid
from ._binder import get_calling_pid as get_calling_pid
from ._binder import get_calling_uid as get_calling_uid
from ._directory import Service as Service
from ._directory import ServiceProcess as ServiceProcess
from ._directory import add_service as add_service
from ._directory import get_service as get_service
from ._directory import list_services as list_services
from ._directory import serve as serve
from ._directory import service_directory as service_directory
from ._directory import start_service as start_service
from ._errors import BadParcel as BadParcel
from ._errors import DeadObjectError as DeadObjectError
from ._errors import RemoteError as RemoteError
from ._errors import ServiceBusyError as ServiceBusyError
from ._errors import ServiceNotFoundError as ServiceNotFoundError
from ._limits import Limits as Limits
from ._limits import get_limits as get_limits
from ._limits import set_limits as set_limits
from ._parcel import Parcel as Parcel
from ._pool import Statistics as Statistics
from ._pool import get_max_threads as get_max_threads
from ._pool import set_max_threads as set_max_threads
from ._pool import statistics as statistics
from ._proxy import DeathRecipient as DeathRecipient
from ._proxy import Proxy as Proxy
from ._wire import MAX_FDS as MAX_FDS
from ._wire import MAX_INLINE as MAX_INLINE

__all__ = [
    "FIRST_CALL_TRANSACTION",
    "FLAG_ONEWAY",
    "INTERFACE_TRANSACTION",
    "LAST_CALL_TRANSACTION",
    "MAX_FDS",
    "MAX_INLINE",
    "PING_TRANSACTION",
    "AllowList",
    "BadParcel",
    "Binder",
    "Credentials",
    "DeadObjectError",
    "DeathRecipient",
    "Limits",
    "Parcel",
    "Policy",
    "Proxy",
    "RemoteError",
    "Service",
    "ServiceBusyError",
    "ServiceNotFoundError",
    "ServiceProcess",
    "Statistics",
    "add_service",
    "clear_calling_identity",
    "get_calling_credentials",
    "get_calling_gid",
    "get_calling_pid",
    "get_calling_uid",
    "get_limits",
    "get_max_threads",
    "get_service",
    "list_services",
    "serve",
    "service_directory",
    "set_limits",
    "set_max_threads",
    "start_service",
    "statistics",
]
