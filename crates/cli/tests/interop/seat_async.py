"""An ASIL service and a QM client written with asyncvarlink (PyPI), an
implementation independent of both qm-ipc and the reference `varlink`
package: it derives its interface description from typed Python classes
instead of parsing one, so the gateway checks calls against a description
another implementation wrote.

Usage: seat_async.py serve SOCKET     (prints "listening")
       seat_async.py call GATEWAY_QM_SOCKET   (prints "interop ok")
"""

import asyncio
import sys
import typing

from asyncvarlink import (
    VarlinkClientProtocol,
    VarlinkInterface,
    VarlinkInterfaceRegistry,
    connect_unix_varlink,
    create_unix_server,
    varlinkmethod,
)
from asyncvarlink.serviceinterface import VarlinkServiceInterface


class Seat(VarlinkInterface, name="com.example.Seat"):
    @varlinkmethod(return_parameter="position")
    def Move(self, *, seat: str, millimetres: int) -> int:
        return 100 + millimetres


async def serve(path: str) -> None:
    registry = VarlinkInterfaceRegistry()
    registry.register_interface(
        VarlinkServiceInterface("qm-ipc tests", "seat", "1", "https://example.com/seat", registry)
    )
    registry.register_interface(Seat())
    server = await create_unix_server(registry.protocol_factory, path)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


async def call(path: str) -> None:
    transport, protocol = await connect_unix_varlink(VarlinkClientProtocol, path)
    seat = protocol.make_proxy(Seat)
    reply = await seat.Move(seat="driver", millimetres=20)
    assert reply == {"position": 120}, reply
    transport.close()
    print("interop ok", flush=True)


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    asyncio.run(serve(path) if mode == "serve" else call(path))
