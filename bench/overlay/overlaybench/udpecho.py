"""A userspace UDP echo: the round trip of the cheapest possible userspace relay.

`python3 udpecho.py server ADDR PORT` answers every datagram; `python3 udpecho.py client
ADDR PORT COUNT INTERVAL` sends COUNT 56-byte datagrams INTERVAL seconds apart, each after
the previous answer, and prints each round trip in ms on its own line. Over the raw veth
it is what any userspace overlay's packets cannot avoid on this machine: a process that
sleeps between packets has to be woken (two wake-ups per round trip here, ping's and the
server's), which on a VM whose idle CPUs halt costs far more than the kernel's own path.
"""
import socket
import sys
import time


def server(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)


def client(addr, port, count, interval):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    payload = b"\0" * 56
    for _ in range(count):
        t0 = time.perf_counter()
        s.sendto(payload, (addr, port))
        try:
            s.recvfrom(2048)
        except socket.timeout:
            print("lost", flush=True)
            continue
        print(f"{(time.perf_counter() - t0) * 1000:.4f}", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 6 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        sys.exit("usage: udpecho.py server ADDR PORT | client ADDR PORT COUNT INTERVAL")
