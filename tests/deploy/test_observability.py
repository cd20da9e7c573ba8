"""deploy/observability: the alert rules pass ``promtool check rules`` and their unit tests (``promtool test
rules``), every query of the rules, the Grafana dashboard and the metrics adapter parses and names only metrics
the processes really export (services/common/metrics.py, services/notification/metrics.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from services.common.metrics import ServerMetrics
from services.notification.metrics import WorkerMetrics
from tests.support import tools

REPO_ROOT = Path(__file__).resolve().parents[2]
OBS = REPO_ROOT / "deploy" / "observability"
RULES = OBS / "alerts.yaml"
DASHBOARD = OBS / "grafana-dashboard.json"
# cowatch's own series: the gRPC server metrics and everything prefixed cowatch_ (recording rules use colons).
METRIC = re.compile(r"(?<![:\w])((?:grpc_server|cowatch)_[a-z0-9_]+)(?![:\w])")
# Grafana's variables, replaced by values promtool accepts.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$service": ".*"}


def promtool() -> str:
    return tools.require("promtool", "checking deploy/observability's rules")


def exported_series() -> set[str]:
    """Every series name the processes export (counters as _total, histograms as _bucket/_sum/_count)."""
    names: set[str] = set()
    for metrics in (ServerMetrics(CollectorRegistry()), WorkerMetrics(CollectorRegistry())):
        for family in metrics.registry.collect():
            names.add(family.name)
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return queries


def rule_queries() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, cwd=OBS)


def test_rules_pass_promtool_check() -> None:
    done = run(promtool(), "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_pass_their_unit_tests() -> None:
    done = run(promtool(), "test", "rules", "alerts.test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    """The checks above can fail: a rule with a PromQL syntax error is refused."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "rate(x[5m]"}]}]}))
    assert run(promtool(), "check", "rules", str(broken)).returncode != 0


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each dashboard query, Grafana's variables filled in, as a recording rule: promtool parses every one."""
    rules: list[dict[str, Any]] = []
    for n, query in enumerate(q for q in dashboard_queries() if not q.startswith("label_values(")):
        for var, value in GRAFANA_VARS.items():
            query = query.replace(var, value)
        rules.append({"record": f"dashboard:query_{n}", "expr": query})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool(), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    "source",
    ["alerts.yaml", "grafana-dashboard.json", "prometheus-adapter.yaml", "deploy/k8s/base/worker.yaml"],
)
def test_queries_name_only_exported_metrics(source: str) -> None:
    path = REPO_ROOT / source if "/" in source else OBS / source
    named = set(METRIC.findall(path.read_text()))
    assert named, f"{source} names no cowatch metric"
    unknown = sorted(named - exported_series())
    assert not unknown, f"{source} names metrics no process exports: {unknown}"


def test_dashboard_covers_what_the_alerts_watch() -> None:
    """What pages someone is on the dashboard too."""
    on_dashboard = set(METRIC.findall(" ".join(dashboard_queries())))
    in_rules = set(METRIC.findall(" ".join(rule_queries())))
    assert in_rules <= on_dashboard, sorted(in_rules - on_dashboard)
    panel_ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
