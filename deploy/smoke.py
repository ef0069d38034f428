#!/usr/bin/env python3
"""Runs the rendered server and agents as local processes and tunnels one request.

Uses the command lines check-configs.py wrote (`*.run.json`: the container's
flags and environment, with `--config` pointing at the rendered TOML whose
in-pod paths were replaced by `connector dev-pki` output). Only addresses are
moved onto loopback, with flags (which take precedence over the file):
`--listen` / `--admin` on the server, `CONNECTOR_SERVER`, `--server-name` and
`--admin` on the agents.

Then, the way kube-apiserver would: HTTP CONNECT over the server's Unix
socket to 127.0.0.1:10250 (a local HTTP server standing in for a kubelet),
served by the DaemonSet agent (which claims ipv4=NODE_IP, faked as
127.0.0.1, and allows NODE_IP:10250); `/readyz` of the server and of every
agent (an agent is ready once the server accepted its credential); and the
server's metrics `connector_server_agents_connected` and
`connector_server_dials_total{result="ok"}`.

Usage: smoke.py SERVER_RUN_JSON AGENT_RUN_JSON... (the first agent serves the dial)
Prints one line per check and `CHECKS ok failed`. Only loopback addresses.
"""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

SERVER_NAME = "connector.tenant-a.example.com"  # on dev-pki's server certificate (validate.sh)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_and_tcp_port():
    """A port free for UDP and for TCP at once: the server takes both (QUIC and its TCP fallback)."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def wait_ready(url, deadline):
    status, body = None, ""
    while time.monotonic() < deadline:
        status, body = get(url)
        if status == 200:
            return True, body
        time.sleep(0.2)
    return False, f"{status} {body.strip()}"


def start(run, extra, env_extra, log):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CONNECTOR_") and k not in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    env.update(run["env"])
    env.update(env_extra)
    return subprocess.Popen(run["argv"] + extra, env=env, stdout=log, stderr=subprocess.STDOUT)


def setting(run, key):
    """A setting of the run's TOML file (flat string values only)."""
    import tomllib
    path = run["argv"][run["argv"].index("--config") + 1]
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return doc[run["argv"][1]].get(key)


class Kubelet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"kubelet stand-in: ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def connect_get(sock_path, target):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200" not in status:
        return status, ""
    s.sendall(f"GET /healthz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return status, data.decode(errors="replace")


def main():
    server_run = json.load(open(sys.argv[1]))
    agent_runs = [json.load(open(p)) for p in sys.argv[2:]]
    work = os.path.dirname(sys.argv[1])
    ok = failed = 0

    def report(good, text):
        nonlocal ok, failed
        print(f"  {'ok  ' if good else 'FAIL'}  {text}")
        ok, failed = ok + good, failed + (not good)

    kubelet = http.server.ThreadingHTTPServer(("127.0.0.1", 10250), Kubelet)
    threading.Thread(target=kubelet.serve_forever, daemon=True).start()
    quic, server_admin = free_udp_and_tcp_port(), free_port()
    procs = []
    try:
        log = open(os.path.join(work, "smoke-server.log"), "w")
        procs.append(start(server_run, ["--listen", f"127.0.0.1:{quic}", "--admin", f"127.0.0.1:{server_admin}"], {}, log))
        deadline = time.monotonic() + 30
        ready, detail = wait_ready(f"http://127.0.0.1:{server_admin}/readyz", deadline)
        report(ready, f"server /readyz: {'200' if ready else detail}")
        agent_admins = []
        for i, run in enumerate(agent_runs):
            port = free_port()
            agent_admins.append(port)
            log = open(os.path.join(work, f"smoke-agent-{i}.log"), "w")
            procs.append(start(run, ["--server-name", SERVER_NAME, "--admin", f"127.0.0.1:{port}"],
                               {"CONNECTOR_SERVER": f"127.0.0.1:{quic}"}, log))
        for run, port in zip(agent_runs, agent_admins):
            ready, detail = wait_ready(f"http://127.0.0.1:{port}/readyz", time.monotonic() + 30)
            auth = "token" if any(a.startswith("--token-file") for a in run["argv"]) else "client certificate"
            report(ready, f"agent {run['env'].get('CONNECTOR_AGENT_ID')} ({auth}) /readyz: {'200, session held' if ready else detail}")
        sock = setting(server_run, "connect-uds")
        try:
            status, body = connect_get(sock, "127.0.0.1:10250")
        except OSError as e:
            status, body = f"{type(e).__name__}: {e}", ""
        report("kubelet stand-in: ok" in body, f"CONNECT 127.0.0.1:10250 over {os.path.basename(sock)}: {status}; {body.splitlines()[-1] if body else 'no body'}")
        _, metrics = get(f"http://127.0.0.1:{server_admin}/metrics")
        values = {}
        for line in metrics.splitlines():
            if line.startswith(("connector_server_agents_connected{", 'connector_server_dials_total{result="ok"}')):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        # Agents on every transport (QUIC, TCP fallback).
        agents = sum(v for k, v in values.items() if k.startswith("connector_server_agents_connected{"))
        dials = values.get('connector_server_dials_total{result="ok"}', 0)
        report(agents == len(agent_runs), f"connector_server_agents_connected {agents:g} (want {len(agent_runs)})")
        report(dials >= 1, f'connector_server_dials_total{{result="ok"}} {dials:g}')
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        kubelet.shutdown()
    if failed:
        for name in sorted(os.listdir(work)):
            if name.startswith("smoke-") and name.endswith(".log"):
                print(f"  --- {name}")
                lines = open(os.path.join(work, name)).read().splitlines()
                for line in lines[:8] + (["      ..."] if len(lines) > 16 else []) + lines[max(8, len(lines) - 8):]:
                    print(f"      {line}")
    print(f"CHECKS {ok} {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
