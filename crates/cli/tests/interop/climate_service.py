"""An ASIL service written with the reference Python varlink implementation
(PyPI `varlink`), which knows nothing of qm-ipc: an ordinary varlink server
on its own socket, serving com.example.Climate.

Usage: climate_service.py SOCKET_PATH
Prints "listening" once the socket accepts connections.
"""

import os
import sys
import time

import varlink

service = varlink.Service(
    vendor="qm-ipc tests",
    product="climate",
    version="1",
    url="https://example.com/climate",
    interface_dir=os.path.dirname(os.path.abspath(__file__)),
)


class OutOfRange(varlink.VarlinkError):
    def __init__(self, celsius):
        varlink.VarlinkError.__init__(
            self,
            {
                "error": "com.example.Climate.OutOfRange",
                "parameters": {"celsius": celsius, "min": 16.0, "max": 28.0},
            },
        )


@service.interface("com.example.Climate")
class Climate:
    calls = 0

    def SetTemperature(self, zone, celsius, mode=None):
        Climate.calls += 1
        if celsius < 16 or celsius > 28:
            raise OutOfRange(celsius)
        return {"applied": True}

    def Zones(self):
        Climate.calls += 1
        return {"zones": [{"name": "front", "celsius": 21.5}, {"name": "rear", "celsius": 20.0}]}

    def Calls(self):
        return {"count": Climate.calls}

    def Slow(self, ms):
        Climate.calls += 1
        time.sleep(ms / 1000)
        return {}


class Handler(varlink.RequestHandler):
    service = service


def main(path):
    server = varlink.ThreadingServer("unix:" + path, Handler)
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1])
