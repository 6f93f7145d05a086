"""A QM client written with the reference Python varlink implementation:
it calls com.example.Climate through the gateway's QM socket as if the
gateway were the service itself (no envelope).

Usage: climate_client.py CONSUMER_SOCKET
Prints "interop ok" when every check passed.
"""

import sys

import varlink


def main(path):
    with varlink.Client(address="unix:" + path) as client:
        assert "com.example.Climate" in client.get_interfaces(), client.get_interfaces()
        with client.open("com.example.Climate", namespaced=True) as climate:
            assert climate.SetTemperature("front", 21.5).applied is True
            zones = climate.Zones().zones
            assert [z.name for z in zones] == ["front", "rear"], zones
            try:
                climate.SetTemperature("front", 40.0)
                raise AssertionError("OutOfRange expected")
            except varlink.VarlinkError as e:
                assert e.error() == "com.example.Climate.OutOfRange", e.error()
                assert e.parameters()["max"] == 28.0, e.parameters()
    print("interop ok", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
