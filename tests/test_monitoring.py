"""
etc/monitoring: the Prometheus alert rules and the Grafana dashboard use
only metrics the roles really export.

The exported names come from the roles themselves: a bootstrap with SIP
and a mediator are built on a memory reactor and their /metrics scraped
(as tests/roles/test_metrics.py does), so a renamed metric fails here
rather than silently emptying a panel or an alert.  ``promtool check
rules`` (Debian ``prometheus``) checks the rule file, and ``promtool test
rules`` runs its unit tests, when promtool is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles import bootstrap, mediator
from p2psip.testing import MemoryUDPReactor, repository_root, require_tool
from p2psip.util import gc_tuning
from tests.web.test_site import Connection, http_request

MONITORING = repository_root() / "etc" / "monitoring"
RULES = MONITORING / "p2psip-alerts.yml"
DASHBOARD = MONITORING / "p2psip-dashboard.json"

#: Series Prometheus makes itself, which no role exports.
PROMETHEUS_SERIES = frozenset({"up"})
#: What a metric name may be in PromQL: our families and the process ones.
METRIC_NAME = re.compile(r"\b(?:p2psip|process)_[a-z0-9_]+\b|\bup\b")
#: The sample names a family of each type exposes.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}


def rule_expressions(text: str) -> list[str]:
    """The ``expr:`` of every rule, one-line or ``|`` blocks (the file is ours: no YAML library)."""
    expressions: list[str] = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        key, _, value = line.strip().partition(": ")
        if key != "expr":
            continue
        if value.strip() != "|":
            expressions.append(value.strip())
            continue
        indent = len(line) - len(line.lstrip()) + 1
        block = []
        for following in lines[number + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            block.append(following.strip())
        expressions.append(" ".join(block).strip())
    return expressions


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    found += [
        variable["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


class MonitoringTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(gc_tuning, "tune_for_server", lambda: (0, 0, 0))
        self.patch(gc_tuning, "freeze_after_start_up", lambda: 0)

    def exported(self) -> dict[str, str]:
        """Every family the ring roles (SIP included) and the mediator export: name -> type."""
        reactor = MemoryUDPReactor()
        ring = bootstrap.Options()
        ring.find_default_address = lambda family: "192.0.2.80"  # type: ignore[method-assign]
        ring.parseOptions(
            [
                *("--overlay", "tcp:16084", "--http", "tcp:18084", "--data-dir", self.mktemp()),
                *("--sip", "udp:15060", "--sip-trusted-network", "--insecure"),
            ]
        )
        relay = mediator.Options()
        relay.parseOptions(["--secret", "x", "--http", "tcp:18087"])
        for service in (
            bootstrap.makeService(ring, reactor),
            mediator.makeService(relay, reactor=reactor),
        ):
            service.startService()
            self.addCleanup(service.stopService)
        families: dict[str, str] = {}
        for _port, site, *_ in reactor.tcpServers:
            if _port not in (18084, 18087):
                continue
            connection = Connection(site)
            connection.send(http_request("GET", "/metrics"))
            body = connection.response().body.decode("utf-8")
            families.update(
                (family.name, family.type) for family in text_string_to_metric_families(body)
            )
        return families

    def sample_names(self) -> set[str]:
        return {
            name + suffix
            for name, kind in self.exported().items()
            for suffix in SUFFIXES.get(kind, ("",))
        } | PROMETHEUS_SERIES

    def assertKnownMetrics(self, expressions: list[str], where: str) -> set[str]:
        known = self.sample_names()
        used: set[str] = set()
        for expression in expressions:
            names = set(METRIC_NAME.findall(expression))
            self.assertTrue(names, f"{where}: no metric in {expression!r}")
            self.assertEqual(names - known, set(), f"{where}: {expression!r}")
            used |= names
        return used

    def test_rules_use_exported_metrics(self) -> None:
        """Every alert expression names metrics the roles export (or Prometheus's own up)."""
        expressions = rule_expressions(RULES.read_text(encoding="utf-8"))
        self.assertGreater(len(expressions), 10)
        used = self.assertKnownMetrics(expressions, RULES.name)
        for group in ("p2psip_overlay_", "p2psip_sip_", "p2psip_mediator_", "process_"):
            self.assertTrue(any(name.startswith(group) for name in used), group)

    def test_promtool_accepts_the_rules(self) -> None:
        """promtool check rules finds the file valid."""
        promtool = require_tool("promtool")
        done = subprocess.run(
            [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("SUCCESS", done.stdout)

    def test_promtool_rule_unit_tests(self) -> None:
        """The alerts fire as etc/monitoring/p2psip-alerts.test.yml expects (promtool test rules)."""
        promtool = require_tool("promtool")
        done = subprocess.run(
            [promtool, "test", "rules", "p2psip-alerts.test.yml"],
            cwd=MONITORING,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)

    def test_dashboard_uses_exported_metrics(self) -> None:
        """The dashboard is JSON Grafana reads, and its queries cover every p2psip family the roles export."""
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        self.assertEqual(dashboard["uid"], "p2psip-overview")
        panels = dashboard["panels"]
        self.assertEqual(len({panel["id"] for panel in panels}), len(panels))
        for panel in panels:
            self.assertEqual(set(panel["gridPos"]), {"h", "w", "x", "y"}, panel["title"])
        used = self.assertKnownMetrics(dashboard_expressions(dashboard), DASHBOARD.name)
        # prometheus_client's text format shows a counter's creation time as a
        # gauge family of its own (NAME_created): not worth a panel.
        families = {
            name
            for name in self.exported()
            if name.startswith("p2psip_") and not name.endswith("_created")
        }
        shown = {
            family
            for family in families
            if any(name == family or name.startswith(family + "_") for name in used)
        }
        self.assertEqual(families - shown, set(), "exported but on no panel")

    def test_rule_expression_reader(self) -> None:
        """The small expr reader takes one-line and block expressions."""
        text = Path(self.mktemp())
        text.write_text(
            "      - alert: A\n        expr: up == 0\n"
            "      - alert: B\n        expr: |\n          sum(x)\n            / sum(y)\n"
            "        for: 5m\n",
            encoding="utf-8",
        )
        self.assertEqual(
            rule_expressions(text.read_text(encoding="utf-8")), ["up == 0", "sum(x) / sum(y)"]
        )
