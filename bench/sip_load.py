"""
REGISTER and call load on one SIP super-node, with the shared SIPp rate ladder.

Starts one ``twistd p2psip-bootstrap`` process that founds a ring alone and
serves SIP on a free loopback UDP port, with the overlay named
``127.0.0.1`` (the ladder's scenarios use the server's address as the SIP
domain), and drives it with ``sipp_ladder.py`` from the shared anchors
folder (see its README for the PASS rule: no failed call, no
retransmission, 95 % of the target rate).  Prints the ladder's tables and a
summary line; asserts nothing.

* ``--auth off``: ``--sip-trusted-network``; the ladder's own REGISTER
  scenario (a new AOR for every REGISTER) and its call ladder (INVITE, 200,
  ACK, BYE, 200 through the super-node to a SIPp callee).
* ``--auth on``: Digest (MD5, which is all SIPp computes) against a users
  file of ``--users`` users; every SIPp call is REGISTER, 401, REGISTER with
  credentials, 200 (tests/integration/sipp/register_digest.xml), users
  taken in turn from an injection file, so AORs are re-registered rather
  than new.

* ``--security secure`` (with ``--auth on``): an enrolled super-node (a
  CA, its node certificate and a user certificate per Digest user made
  before it starts), which signs every registration with the user's
  certificate; ``--security both`` runs the insecure one too and prints
  the slowdown: the cost of security for REGISTER.

Usage::

    .venv/bin/python bench/sip_load.py --auth both --rates 250,500,1000,2000 \
        --call-rates 100,250,500 --duration 6
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from super_nodes import DOMAIN, load_sipp_ladder, start_super_node, stop_process

from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, repository_root, shared_dir

DIGEST_SCENARIO = repository_root() / "tests" / "integration" / "sipp" / "register_digest.xml"
PASSWORD = "bench-password"


def start_server(
    work: Path,
    sip_port: int,
    auth: bool,
    users: Path | None,
    enrolled_aors: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """One super-node process; its pid is what the ladder measures."""
    return start_super_node(
        work / "server",
        sip_port,
        "p2psip-bootstrap",
        auth=auth,
        users=users,
        enrolled_aors=enrolled_aors,
    ).process


stop_server = stop_process


def ladder_arguments(
    args: argparse.Namespace, mode: str, rates: str, sip_port: int, pid: int, work: Path
) -> list[str]:
    return [
        mode,
        "--port",
        str(sip_port),
        "--server-pid",
        str(pid),
        "--rates",
        rates,
        "--duration",
        str(args.duration),
        "--refine",
        str(args.refine),
        "--work",
        str(work),
        "--client-port",
        str(args.client_port),
        "--uas-port",
        str(args.client_port + 10),
        "--json",
        str(work / "result.json"),
    ]


def run_ladder(argv: list[str], digest_users: Path | None = None) -> int | None:
    """
    The shared ladder in a child process (with the Digest scenario swapped in
    when asked); echoes its output and returns its highest passing rate.
    """
    command = [sys.executable, __file__, "--ladder"]
    if digest_users is not None:
        command += ["--digest-users", str(digest_users)]
    best: int | None = None
    with subprocess.Popen(command + ["--", *argv], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            found = re.match(r"MAX_PASS \w+ (\d+)", line)
            if found:
                best = int(found.group(1))
    return best


def run_kamailio_anchor(step_seconds: float) -> dict[str, float]:
    """
    The shared Kamailio anchor, run now on this machine, so the ratios
    compare like with like; returns its summary line's numbers.
    """
    script = shared_dir() / "anchors" / "run_kamailio_anchor.sh"
    environment = dict(os.environ, STEP_S=str(int(step_seconds)))
    print(f"\n## Kamailio anchor ({script.name}), same machine, same run", flush=True)
    summary: dict[str, float] = {}
    with subprocess.Popen(
        ["bash", str(script)], stdout=subprocess.PIPE, text=True, env=environment
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("kamailio "):
                for field in line.split()[1:]:
                    name, _, value = field.partition("=")
                    try:
                        summary[name] = float(value)
                    except ValueError:
                        pass
    return summary


def ladder_main(rest: list[str], digest_users: str | None) -> None:
    """Child side of run_ladder: import the shared ladder and run its main."""
    sipp_ladder = load_sipp_ladder()

    if digest_users is not None:

        def digest_scenario(a: argparse.Namespace, prefix: str) -> list[str]:
            return [
                "-sf",
                str(DIGEST_SCENARIO),
                "-inf",
                digest_users,
                "-auth_uri",
                DOMAIN,
                "-key",
                "domain",
                DOMAIN,
                "-key",
                "contact_port",
                "5999",
            ]

        sipp_ladder.scenario_args = digest_scenario
    sys.argv = ["sipp_ladder.py", *rest]
    sipp_ladder.main()


def user_aors(count: int) -> list[str]:
    """The AORs of the benchmark's Digest users."""
    return [f"sip:bench{index:06d}@{DOMAIN}" for index in range(count)]


def make_users(work: Path, count: int) -> tuple[Path, Path]:
    """A users file and the matching SIPp injection file."""
    users = UsersFile.load(work / "users", missing_ok=True)
    lines = ["SEQUENTIAL"]
    for index, aor in enumerate(user_aors(count)):
        name = f"bench{index:06d}"
        users.set_password(aor, PASSWORD)
        lines.append(f"{name};[authentication username={name} password={PASSWORD}]")
    users.save()
    injection = work / "users.csv"
    injection.write_text("\n".join(lines) + "\n", encoding="ascii")
    return users.path, injection


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--auth", choices=["off", "on", "both"], default="both")
    parser.add_argument("--rates", default="250,500,1000,2000", help="REGISTER ladder, per second")
    parser.add_argument(
        "--call-rates", default="100,250,500", help="call ladder (auth off), calls per second"
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per step")
    parser.add_argument(
        "--refine", type=int, default=2, help="bisection steps after the first failure"
    )
    parser.add_argument("--users", type=int, default=20000, help="users in the Digest users file")
    parser.add_argument(
        "--client-port", type=int, default=0, help="SIPp ports start here (default: free)"
    )
    parser.add_argument(
        "--work", help="keep SIPp and server logs here (default: a temporary folder)"
    )
    parser.add_argument(
        "--kamailio",
        action="store_true",
        help="also run the shared Kamailio anchor and print the ratios",
    )
    parser.add_argument(
        "--security",
        choices=["insecure", "secure", "both"],
        default="insecure",
        help="secure: an enrolled super-node holding a user certificate per Digest user "
        "(with --auth on only)",
    )
    parser.add_argument("--ladder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--digest-users", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.ladder:
        ladder_main([r for r in rest if r != "--"], args.digest_users)
        return
    ladder = shared_dir() / "anchors" / "sipp_ladder.py"
    if not ladder.exists():
        raise SystemExit(f"{ladder} not found: point P2PSIP_SHARED at the shared test data folder")
    if not args.client_port:
        args.client_port = free_port(__import__("socket").SOCK_DGRAM)
    with tempfile.TemporaryDirectory(prefix="p2psip-sip-load-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        modes = ["off", "on"] if args.auth == "both" else [args.auth]
        securities = ["insecure", "secure"] if args.security == "both" else [args.security]
        if "secure" in securities and modes != ["on"]:
            raise SystemExit("--security secure needs --auth on: every AOR needs a certificate")
        results: dict[tuple[str, str, str], int | None] = {}
        for security in securities:
            for auth in modes:
                ladders = [("register", args.rates)] + (
                    [("call", args.call_rates)] if auth == "off" else []
                )
                users = injection = None
                if auth == "on":
                    users, injection = make_users(work, args.users)
                aors = user_aors(args.users) if security == "secure" else None
                for mode, rates in ladders:
                    step_work = work / f"{security}_auth_{auth}_{mode}"
                    sip_port = free_port(__import__("socket").SOCK_DGRAM)
                    server = start_server(step_work, sip_port, auth == "on", users, aors)
                    try:
                        print(
                            f"\n## p2psip super-node (pid {server.pid}, {security}), {mode} "
                            f"ladder, authentication {auth}",
                            flush=True,
                        )
                        results[(security, auth, mode)] = run_ladder(
                            ladder_arguments(args, mode, rates, sip_port, server.pid, step_work),
                            injection if mode == "register" else None,
                        )
                    finally:
                        stop_server(server)
        print(
            "\n## Summary: highest passing rate per ladder (0 failures, 0 retransmissions)",
            flush=True,
        )
        for (security, auth, mode), best in results.items():
            print(
                f"p2psip {mode:<8} auth {auth:<3} {security:<8}: "
                f"{best if best is not None else 'none passed'}/s",
                flush=True,
            )
        insecure_rate = results.get(("insecure", "on", "register"))
        secure_rate = results.get(("secure", "on", "register"))
        if insecure_rate and secure_rate:
            print(
                f"cost of security, REGISTER/s: secure {secure_rate} vs insecure {insecure_rate}"
                f" = {100 * (1 - secure_rate / insecure_rate):.0f}% slower",
                flush=True,
            )
        if args.kamailio:
            anchor = run_kamailio_anchor(args.duration)
            for mode, key in (("register", "register_max_rate"), ("call", "calls_max_rate")):
                ours, theirs = results.get((securities[0], "off", mode)), anchor.get(key)
                if ours and theirs:
                    print(
                        f"ratio p2psip/kamailio {mode}: {ours}/{theirs:.0f} = {ours / theirs:.2f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
