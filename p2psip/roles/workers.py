"""
``--workers N``: one super-node host, N worker processes, every core busy.

A super-node is one Python process, so it uses one core.  With
``--workers N`` the process started by twistd becomes a supervisor: it
starts N workers (the same role and options, plus ``--worker K``) and
otherwise only serves ``/status`` and ``/metrics`` for all of them.  Each
worker is a ring peer of its own:

* its own Node-ID and key, in ``DATA_DIR/worker-K/`` (made, or enrolled,
  on its first start like any peer's);
* its own overlay listener, ``--overlay``'s port plus K, and status site,
  ``--http``'s port plus 1 + K (the supervisor keeps ``--http``);
* the SIP UDP and TCP listeners of ``--sip``, shared by every worker with
  ``SO_REUSEPORT``: the kernel spreads phones across workers and keeps one
  phone's flow on one worker; besides, a port of its own on the same
  interface that it announces in the overlay (AppAttach), puts in Via
  and Record-Route, and sends UDP from (except to phones heard on the
  shared port), so that another super-node's answers, a directly called
  phone's answers (to Via or to the source address), and the dialogs it
  proxies come back to this worker;
* an equal share of ``--media-ports``;
* its log in ``DATA_DIR/worker-K/twistd.log``.

SIGTERM to the supervisor sends SIGTERM to every worker (each leaves the
ring with Leave) and waits for them; a worker whose supervisor vanished
stops too (its stdin, a pipe from the supervisor, closes).  A worker that
dies is started again after a few seconds.

The worker-side changes to the configuration are :func:`worker_config`; the
supervisor is :class:`WorkerSupervisor`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from attrs import evolve
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from p2psip.roles.ring_options import MediaRelayConfig, RingRoleConfig
from p2psip.util.endpoints import endpoint_interface, stream_listen_port
from p2psip.util.logs import Logger
from p2psip.util.reactor import IRoleReactor
from p2psip.web.site import build_site, http_service

__all__ = [
    "RESTART_DELAY_SECONDS",
    "STOP_TIMEOUT_SECONDS",
    "ParentWatch",
    "WorkerSupervisor",
    "shift_port",
    "worker_config",
    "worker_http_port",
]

#: A worker that died is started again after this long.
RESTART_DELAY_SECONDS = 5.0
#: How long SIGTERM'd workers get to leave the ring before SIGKILL.
STOP_TIMEOUT_SECONDS = 30.0
#: How often the supervisor reads the workers' /metrics.
METRICS_INTERVAL_SECONDS = 5.0

_PORT = re.compile(r"^(?P<kind>[A-Za-z0-9]+):(?P<key>port=)?(?P<port>[0-9]+)(?P<rest>(:.*)?)$")


def shift_port(description: str, offset: int) -> str:
    """``tcp:6085:interface=X`` shifted by 2 is ``tcp:6087:interface=X`` (port 0 stays 0)."""
    match = _PORT.match(description.strip())
    if match is None:
        raise usage.UsageError(
            f"{description!r}: with --workers the overlay and http listeners must be "
            "tcp:PORT strings (worker K listens on PORT+K)"
        )
    port = int(match["port"])
    if port == 0:
        return description
    return f"{match['kind']}:{match['key'] or ''}{port + offset}{match['rest']}"


def worker_http_port(config: RingRoleConfig, index: int) -> int:
    """The port of worker ``index``'s status site: ``--http``'s plus 1 + index."""
    port = stream_listen_port(config.http)
    assert port is not None
    return port + 1 + index


def _media_share(media: MediaRelayConfig, index: int, count: int) -> MediaRelayConfig:
    """Worker ``index``'s slice of the relay ports (even-aligned, RTP/RTCP pairs)."""
    if media.low_port == 0 and media.high_port == 0:
        return media  # media-ports none: nothing to share
    size = (media.high_port - media.low_port + 1) // count // 2 * 2
    if size < 4:
        raise usage.UsageError(
            f"--media-ports {media.low_port}-{media.high_port} is too small for {count} "
            "workers: each needs at least two port pairs"
        )
    low = media.low_port + index * size
    return evolve(media, low_port=low, high_port=low + size - 1)


def check_supervisor_config(config: RingRoleConfig) -> None:
    """Refuse what N workers cannot share, naming the option to change."""
    if config.role != "peer":
        raise usage.UsageError(
            "--workers is for peers: run the bootstrap as one process and give the host's "
            "other cores to peers with --workers"
        )
    if config.sip is None:
        raise usage.UsageError("--workers needs --sip: the workers share the SIP ports")
    for description in config.sip.tls_listeners:
        if not description.strip().lower().startswith("tcp:"):
            raise usage.UsageError(
                f"--sip-tls {description}: with --workers give a tcp:PORT string (the workers "
                "share the port; TLS runs on top with --sip-tls-certificate)"
            )
    for option, description in (("--overlay", config.listen), ("--http", config.http)):
        shift_port(description, 0)
        if stream_listen_port(description) in (None, 0):
            raise usage.UsageError(
                f"{option} {description}: with --workers give a fixed port "
                "(worker K uses PORT+K for --overlay and PORT+1+K for --http)"
            )


def worker_config(config: RingRoleConfig, index: int, count: int) -> RingRoleConfig:
    """What worker ``index`` of ``count`` runs: its own directory and ports, shared SIP ports."""
    check_supervisor_config(config)
    assert config.sip is not None
    sip = evolve(config.sip, shared_ports=True)
    if sip.media is not None:
        sip = evolve(sip, media=_media_share(sip.media, index, count))
    return evolve(
        config,
        title=f"{config.title} (worker {index})",
        data_dir=config.data_dir / f"worker-{index}",
        listen=shift_port(config.listen, index),
        http=shift_port(config.http, 1 + index),
        sip=sip,
        workers=count,
        worker_index=index,
    )


class _StdinClosed(Protocol):
    """Stops the worker when its stdin, a pipe from the supervisor, closes."""

    def __init__(self, reactor: IRoleReactor) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        if getattr(self.reactor, "running", False):
            self.reactor.stop()


class ParentWatch(Service):
    """A worker's watch on its supervisor: no orphaned workers after a crash."""

    def __init__(self, reactor: IRoleReactor) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        from twisted.internet.stdio import StandardIO

        StandardIO(_StdinClosed(self.reactor), reactor=self.reactor)


class _QuietClientFactory(_HTTP11ClientFactory):
    """The supervisor's reads of its workers' pages, without a log line each."""

    noisy = False


class _WorkerProcess(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self.process: IProcessTransport | None = None

    def connectionMade(self) -> None:
        self.process = self.transport

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(MultiService):
    """Starts, watches and stops the workers; serves their /status and /metrics."""

    log = Logger()

    def __init__(
        self,
        config: RingRoleConfig,
        arguments: Sequence[str],
        reactor: IRoleReactor,
        *,
        executable: str = sys.executable,
    ) -> None:
        super().__init__()
        check_supervisor_config(config)
        self.config = config
        self.count = config.workers
        self.arguments = list(arguments)
        self.reactor = reactor
        self.executable = executable
        self.workers: dict[int, _WorkerProcess] = {}
        self.restarts = 0
        self._stopping = False
        interface = endpoint_interface(config.http) or "127.0.0.1"
        self._http_host = "127.0.0.1" if interface in ("0.0.0.0", "::") else interface
        self._metrics: dict[int, list[Metric]] = {}
        self._pool = HTTPConnectionPool(reactor)
        self._pool._factory = _QuietClientFactory  # no info line per scrape
        self._agent = Agent(reactor, pool=self._pool)
        self._scrape = LoopingCall(self._read_metrics)
        self._scrape.clock = reactor
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_WorkerMetrics(self))
        site = build_site(
            status=self.status,
            metrics=registry,
            api={},
            admin_token=None,
            title=f"{config.title} ({self.count} workers)",
            allowed_hosts=config.http_allowed_hosts,
            reactor=reactor,
        )
        http_service(config.http, site, reactor).setServiceParent(self)

    def command(self, index: int) -> list[str]:
        """The command line of worker ``index``: this role again, with ``--worker``."""
        log_file = self.config.data_dir / f"worker-{index}" / "twistd.log"
        return [
            self.executable,
            "-m",
            "twisted",
            f"--log-file={log_file}",
            f"p2psip-{self.config.role}",
            *self.arguments,
            "--worker",
            str(index),
        ]

    def startService(self) -> None:
        super().startService()
        for index in range(self.count):
            self._spawn(index)
        self._scrape.start(METRICS_INTERVAL_SECONDS, now=False)
        self.log.info(
            "started {count} workers of this super-node (pids {pids})",
            count=self.count,
            pids=" ".join(str(self._pid(w)) for w in self.workers.values()),
        )

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        (self.config.data_dir / f"worker-{index}").mkdir(parents=True, exist_ok=True, mode=0o700)
        worker = _WorkerProcess(self, index)
        self.workers[index] = worker
        self.reactor.spawnProcess(  # type: ignore[attr-defined]
            worker,
            self.executable,
            self.command(index),
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2},
        )

    @staticmethod
    def _pid(worker: _WorkerProcess) -> int | None:
        return getattr(worker.process, "pid", None)

    def _ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        if self._stopping:
            return
        self.restarts += 1
        self.log.warn(
            "worker {index} ended ({why}); starting it again in {delay:.0f} s",
            index=worker.index,
            why=reason.getErrorMessage(),
            delay=RESTART_DELAY_SECONDS,
        )
        self.reactor.callLater(RESTART_DELAY_SECONDS, self._spawn, worker.index)

    def stopService(self) -> Deferred[Any]:
        """SIGTERM every worker (each leaves the ring), then wait; SIGKILL the slow ones."""
        self._stopping = True
        if self._scrape.running:
            self._scrape.stop()
        waits: list[Deferred[None]] = []
        for worker in self.workers.values():
            if worker.ended.called or worker.process is None:
                continue
            try:
                worker.process.signalProcess("TERM")
            except Exception:  # already gone
                continue
            waits.append(worker.ended)
        waits.append(self._pool.closeCachedConnections())
        late = self.reactor.callLater(STOP_TIMEOUT_SECONDS, self._kill_all)
        stopped = super().stopService()

        def done(result: object) -> object:
            if late.active():
                late.cancel()
            return result

        return DeferredList([*waits, stopped]).addBoth(done)

    def _kill_all(self) -> None:
        for worker in self.workers.values():
            if not worker.ended.called and worker.process is not None:
                self.log.warn("worker {index} did not stop in time: killed", index=worker.index)
                try:
                    worker.process.signalProcess("KILL")
                except Exception:
                    pass

    # -- what the workers say ----------------------------------------------------

    def _url(self, index: int, path: str) -> bytes:
        port = worker_http_port(self.config, index)
        return f"http://{self._http_host}:{port}{path}".encode()

    def _get(self, index: int, path: str) -> Deferred[bytes]:
        from twisted.web.client import readBody

        answer: Deferred[Any] = self._agent.request(b"GET", self._url(index, path))
        return answer.addCallback(readBody)

    def status(self) -> Deferred[dict[str, Any]]:
        """``/status``: the supervisor's view and every worker's own document."""
        import json

        def one(index: int) -> Deferred[dict[str, Any]]:
            worker = self.workers.get(index)
            entry: dict[str, Any] = {
                "index": index,
                "pid": self._pid(worker) if worker else None,
                "http": self._url(index, "/").decode(),
            }

            def read(body: bytes) -> dict[str, Any]:
                entry["status"] = json.loads(body)
                return entry

            def unreachable(failure: Failure) -> dict[str, Any]:
                entry["error"] = failure.getErrorMessage() or repr(failure.value)
                return entry

            return self._get(index, "/status").addCallbacks(read, unreachable)

        documents = DeferredList([one(index) for index in range(self.count)])

        def assemble(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            return {
                "role": self.config.role,
                "workers_count": self.count,
                "restarts": self.restarts,
                "workers": [value for _ok, value in results],
            }

        return documents.addCallback(assemble)

    def _read_metrics(self) -> Deferred[Any]:
        def keep(body: bytes, index: int) -> None:
            self._metrics[index] = list(text_string_to_metric_families(body.decode()))

        def lost(failure: Failure, index: int) -> None:
            self._metrics.pop(index, None)

        return DeferredList(
            [
                self._get(index, "/metrics").addCallbacks(
                    keep, lost, callbackArgs=(index,), errbackArgs=(index,)
                )
                for index in range(self.count)
            ]
        )

    def merged_metrics(self) -> list[Metric]:
        """Every worker's families as one, each sample labelled with its ``worker``."""
        merged: dict[str, Metric] = {}
        for index, families in sorted(self._metrics.items()):
            for family in families:
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                for sample in family.samples:
                    labels = {**sample.labels, "worker": str(index)}
                    into.add_sample(sample.name, labels, sample.value)
        return list(merged.values())


class _WorkerMetrics:
    """The supervisor's /metrics: the workers' families as last read."""

    def __init__(self, supervisor: WorkerSupervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> list[Metric]:
        return self.supervisor.merged_metrics()
