# A hostile local user of oomcount's socket, run by the tests as uid 65534 (see hostile.rs).
#
#   hostile.py SOCKET hold KIND N   keep N connections of KIND open, reconnecting each one the
#                                   daemon closes at once; prints "ready N" when all N were tried,
#                                   and its figures when it gets SIGTERM
#   hostile.py SOCKET slots         fill this uid's slots with watchers; print the limit and the
#                                   refusal; close them; time how long until as many fit again
#   hostile.py SOCKET stall         pipeline requests on one connection and never read: time
#                                   until the daemon lets the connection go
#
# KIND: idle (send nothing), watch (watch, never read), half (watch, then shut down the
# sending half, never read), flood (pipeline verdict and count requests, read and discard the
# answers), stall (pipeline requests, never read).
import json
import os
import resource
import select
import signal
import socket
import sys
import time

WATCH = b'{"request":"watch"}\n'
FLOOD = b'{"request":"verdict"}\n' * 40 + b'{"request":"count"}\n' * 10
HUP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.setblocking(False)
    return s


def send_some(s, data):
    try:
        return s.send(data)
    except (BlockingIOError, BrokenPipeError, ConnectionResetError):
        return 0


def hold(path, kind, n):
    # 1000 sockets and stdio fit under the usual 1024, but not by much.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ep = select.epoll()
    socks = {}
    figures = {"connects": 0, "closed_by_daemon": 0, "sent": 0, "read": 0}

    def open_one():
        s = connect(path)
        figures["connects"] += 1
        if kind in ("watch", "half"):
            send_some(s, WATCH)
        if kind == "half":
            s.shutdown(socket.SHUT_WR)
        # Only the hang-up is watched where the kind never reads.
        mask = HUP
        if kind == "flood":
            mask |= select.EPOLLIN | select.EPOLLOUT
        elif kind == "stall":
            mask |= select.EPOLLOUT
        ep.register(s.fileno(), mask)
        socks[s.fileno()] = s

    def stop(*_):
        print("figures " + json.dumps(figures), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    for _ in range(n):
        open_one()
    print("ready %d" % len(socks), flush=True)
    while True:
        for fd, ev in ep.poll():
            s = socks.get(fd)
            if s is None:
                continue
            if ev & select.EPOLLIN:
                try:
                    got = s.recv(65536)
                    figures["read"] += len(got)
                    if not got:
                        ev |= select.EPOLLHUP
                except (BlockingIOError, ConnectionResetError):
                    pass
            if ev & select.EPOLLOUT and not ev & HUP:
                figures["sent"] += send_some(s, FLOOD)
            if ev & HUP:
                figures["closed_by_daemon"] += 1
                ep.unregister(fd)
                del socks[fd]
                s.close()
                open_one()


def read_line(s, timeout=5.0):
    s.setblocking(True)
    s.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            got = s.recv(4096)
            if not got:
                break
            data += got
    except OSError as err:
        return "(%s after %r)" % (err, data)
    return data.decode(errors="replace").strip()


def watcher(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.sendall(WATCH)
    except OSError:
        pass  # closed at once: what it was told is still there to read
    return s, read_line(s)


def slots(path):
    held = []
    refusal = None
    for _ in range(100):
        s, line = watcher(path)
        if line.startswith('{"watching"'):
            held.append(s)
            continue
        refusal = line
        s.close()
        break
    print("limit %d %s" % (len(held), refusal), flush=True)
    for s in held:
        s.close()
    closed = time.monotonic()
    again = []
    while len(again) < len(held) and time.monotonic() - closed < 5.0:
        s, line = watcher(path)
        if line.startswith('{"watching"'):
            again.append(s)
        else:
            s.close()
    print("again %d %.3f" % (len(again), time.monotonic() - closed), flush=True)


def stall(path):
    s = connect(path)
    request = b'{"request":"verdict"}\n' * 100
    # Until neither side's buffer takes more: the daemon no longer reads either.
    last_sent = time.monotonic()
    while time.monotonic() - last_sent < 0.5:
        if send_some(s, request):
            last_sent = time.monotonic()
        else:
            time.sleep(0.01)
    print("stalled", flush=True)
    p = select.poll()
    p.register(s.fileno(), select.POLLRDHUP)
    began = time.monotonic()
    ready = p.poll(60000)
    print("closed %s %.3f" % (bool(ready), time.monotonic() - began), flush=True)


def main():
    path, what = sys.argv[1], sys.argv[2]
    if what == "hold":
        hold(path, sys.argv[3], int(sys.argv[4]))
    elif what == "slots":
        slots(path)
    elif what == "stall":
        stall(path)
    else:
        sys.exit("unknown " + what)


main()
