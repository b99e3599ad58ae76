#!/usr/bin/env python3
"""
STUN Binding throughput: our UDP server against coturn, same load, same run.

Starts each server in a subprocess on a free loopback port, drives it with
the shared load generator (``anchors/stun_load.py`` in the shared folder
beside the checkout, invoked in place), stops it by its pid, and alternates
the two servers for ``--rounds`` rounds so drift on a shared machine hits
both.  coturn runs with the shared ``anchors/turnserver.conf`` (STUN only,
2 relay threads); only its port and the files it writes are overridden.
Our server runs as ``StunUdpService`` on the default reactor with the
default 4 MiB socket buffers.

Prints one line per run (the load generator's own summary), then the
median responses/s of each server and the ratio ours/coturn.

    python bench/stun_load.py                     # 2 rounds of closed loop, 2 procs x 32
    python bench/stun_load.py --rounds 3 --rate 30000
    python bench/stun_load.py --serve 3478        # only run our server (foreground)

Loopback only; every process it starts is stopped by pid, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from p2psip.nat import stun
from p2psip.testing import free_port, shared_dir

READY_TIMEOUT_SECONDS = 15.0


def serve(port: int, receive_buffer_bytes: int) -> None:
    """Run our STUN server in the foreground until SIGTERM (the subprocess side)."""
    import gc

    from twisted.internet import reactor

    from p2psip.nat.stun_server import StunUdpService

    service = StunUdpService(
        port,
        interface="127.0.0.1",
        reactor=reactor,
        receive_buffer_bytes=receive_buffer_bytes,
        send_buffer_bytes=receive_buffer_bytes,
    )
    service.startService()
    # Nothing long-lived is created per request; freezing start-up objects
    # keeps full collections short (see the anchors' "Lessons").
    gc.freeze()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    """Poll with Binding requests until the server answers (or fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        attempts = int(READY_TIMEOUT_SECONDS / 0.2)
        for _ in range(attempts):
            if process.poll() is not None:
                raise SystemExit(f"server exited early with status {process.returncode}")
            request = stun.binding_request()
            probe.sendto(stun.encode_message(request), ("127.0.0.1", port))
            try:
                data = probe.recv(2048)
            except socket.timeout:
                continue
            if stun.decode_message(data).transaction_id == request.transaction_id:
                return
    raise SystemExit(f"no STUN answer on 127.0.0.1:{port} within {READY_TIMEOUT_SECONDS:g} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by pid, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_ours(port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)]
    command += ["--buffer-bytes", str(args.buffer_bytes)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_coturn(port: int, anchors: Path, workdir: Path) -> subprocess.Popen[bytes]:
    command = [
        "turnserver",
        "-c",
        str(anchors / "turnserver.conf"),
        "--listening-port",
        str(port),
        "--pidfile",
        str(workdir / "turnserver.pid"),
        "--log-file",
        str(workdir / "turnserver.log"),
        "--userdb",
        str(workdir / "turnserver.sqlite"),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_load(
    anchors: Path, port: int, pid: int, label: str, args: argparse.Namespace, workdir: Path
) -> dict[str, object]:
    out = workdir / f"{label}.json"
    command = [
        sys.executable,
        str(anchors / "stun_load.py"),
        "127.0.0.1",
        str(port),
        "-n",
        str(args.requests),
        "-w",
        str(args.window),
        "--procs",
        str(args.procs),
        "--max-seconds",
        str(args.seconds),
        "--server-pid",
        str(pid),
        "--label",
        label,
        "--json",
        str(out),
    ]
    if args.rate:
        command += ["--rate", str(args.rate)]
    if args.fingerprint:
        command.append("--fingerprint")
    completed = subprocess.run(command, capture_output=True, text=True)
    print(completed.stdout.strip() or completed.stderr.strip(), flush=True)
    try:
        result: dict[str, object] = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--serve", type=int, metavar="PORT", help="only run our server on 127.0.0.1:PORT"
    )
    parser.add_argument(
        "--buffer-bytes", type=int, default=4 * 1024 * 1024, help="our SO_RCVBUF/SO_SNDBUF"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per server")
    parser.add_argument("--requests", "-n", type=int, default=300000, help="requests per run")
    parser.add_argument(
        "--window", "-w", type=int, default=32, help="outstanding per client process"
    )
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--rate", type=float, default=0, help="open loop rate (0: closed loop)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=30,
        help="hard stop per run (in-flight requests then count as lost)",
    )
    parser.add_argument("--fingerprint", action="store_true", help="requests carry FINGERPRINT")
    parser.add_argument(
        "--shared", type=Path, help="the shared folder (default: beside the checkout)"
    )
    parser.add_argument("--only", choices=["ours", "coturn"], help="measure one server only")
    args = parser.parse_args()

    if args.serve is not None:
        serve(args.serve, args.buffer_bytes)
        return 0

    anchors = (args.shared or shared_dir()) / "anchors"
    if not (anchors / "stun_load.py").exists():
        parser.error(f"{anchors}/stun_load.py not found; pass --shared DIR or set P2PSIP_SHARED")
    servers = ["ours", "coturn"] if args.only is None else [args.only]
    if "coturn" in servers and shutil.which("turnserver") is None:
        parser.error("turnserver not found; `make deps` installs coturn (or pass --only ours)")

    results: dict[str, list[dict[str, object]]] = {name: [] for name in servers}
    with tempfile.TemporaryDirectory(prefix="p2psip-stun-bench-") as tmp:
        workdir = Path(tmp)
        for round_index in range(args.rounds):
            order = servers if round_index % 2 == 0 else servers[::-1]
            for name in order:
                port = free_port(socket.SOCK_DGRAM)
                if name == "ours":
                    process = start_ours(port, args)
                else:
                    process = start_coturn(port, anchors, workdir)
                try:
                    wait_ready(port, process)
                    label = f"{name}_r{round_index + 1}"
                    results[name].append(run_load(anchors, port, process.pid, label, args, workdir))
                finally:
                    stop(process)

    print()
    medians: dict[str, float] = {}
    cpu_costs: dict[str, float] = {}
    for name, runs in results.items():
        rates = [float(r.get("responses_per_s", 0) or 0) for r in runs]
        # Server CPU time per answered request: less sensitive than the
        # rate to other load on the machine, which starves both servers.
        costs = [
            float(r["server_cpu_pct"]) / 100 * float(r["elapsed_s"]) / int(r["received"]) * 1e6  # type: ignore[arg-type]
            for r in runs
            if r.get("server_cpu_pct") is not None and r.get("received")
        ]
        lost = sum(int(r.get("lost", 0) or 0) for r in runs)  # type: ignore[call-overload]
        medians[name] = statistics.median(rates) if rates else 0.0
        cpu_costs[name] = statistics.median(costs) if costs else 0.0
        print(
            f"{name:7s} responses/s median {medians[name]:9.0f}  runs {[round(x) for x in rates]}"
            f"  server CPU us/response median {cpu_costs[name]:.2f} runs {[round(c, 2) for c in costs]}"
            f"  lost {lost}"
        )
    if "ours" in medians and medians.get("coturn"):
        print(f"ratio ours/coturn responses/s {medians['ours'] / medians['coturn']:.2f}")
    if cpu_costs.get("ours") and cpu_costs.get("coturn"):
        print(f"ratio coturn/ours CPU per response {cpu_costs['coturn'] / cpu_costs['ours']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
