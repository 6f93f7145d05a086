"""Talks to a running qm-ipc gateway with the reference Python varlink
implementation (PyPI `varlink`), which knows nothing of qm-ipc: it learns the
interface from GetInterfaceDescription, parses our IDL with its own parser,
and calls the methods through it.

Usage: varlink_client.py CONSUMER_SOCKET
Exits non-zero with a message on any mismatch.
"""

import sys

import varlink


def main(socket_path: str) -> None:
    address = f"unix:{socket_path}"
    with varlink.Client(address=address) as client:
        info = client.get_interfaces()
        assert "io.qmipc.Gateway" in info, f"interfaces: {info}"

        with client.open("io.qmipc.Gateway", namespaced=True) as gw:
            # The IDL parsed: the method exists with its documented signature.
            iface = client.get_interface("io.qmipc.Gateway")
            for method in ("Publish", "Get", "Subscribe", "Stats", "Instance", "Describe", "List", "Monitor"):
                assert method in iface.members, f"{method} missing from {list(iface.members)}"
            # Serving is for varlink services of their own behind the
            # gateway (tests/interop/climate_service.py), not the gateway's.
            for gone in ("Register", "Reply", "Call"):
                assert gone not in iface.members, f"{gone} is still declared"

            reply = gw.Publish("interop.topic", {"from": "python"})
            assert reply.seq == 1, reply

            sample = gw.Get("interop.topic").sample
            assert sample.topic == "interop.topic", sample
            assert sample.value == {"from": "python"}, sample
            assert sample.seq == 1, sample

            # A streaming call through the reference implementation.
            with client.open("io.qmipc.Gateway", namespaced=True) as sub:
                stream = sub.Subscribe(["interop.*"], _more=True)
                first = next(stream).sample
                assert first.seq == 1 and first.value == {"from": "python"}, first
                gw.Publish("interop.topic", {"n": 2})
                second = next(stream).sample
                assert second.seq == 2 and second.value == {"n": 2}, second

            # A named error comes back as the reference library's VarlinkError.
            try:
                gw.Get("interop.missing")
            except varlink.VarlinkError as e:
                assert e.error() == "io.qmipc.Gateway.NoSuchTopic", e.error()
                assert e.parameters()["topic"] == "interop.missing", e.parameters()
            else:
                raise AssertionError("Get of a missing topic must fail")

    print("interop ok")


if __name__ == "__main__":
    main(sys.argv[1])
