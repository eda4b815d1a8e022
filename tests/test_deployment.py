"""The deployment files: docker-compose.yml, deploy/ and the Dockerfile, checked without Docker.

No Docker engine runs here, so these tests read the files: the compose file
parses, names real settings with values they accept, runs two or more server
replicas that share Redis and the uploads volume behind nginx, mounts the
shipped deploy/nginx.conf (the file tests/test_proxy.py runs in front of real
replicas) with include files that name the replicas by their service names
and listen on the published port; and ``docker-compose config -q`` (the
compose CLI's own validation) accepts it.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from resumable.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
NGINX_CONFIG = DEPLOY / "nginx.conf"
NGINX_CONF_DIR = "/etc/nginx"  # the main config's directory in the nginx image
REPLICA = re.compile(r"resumable-\d+")

SETTING_VARIABLES = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def compose() -> dict:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def replicas(services: dict) -> dict[str, dict]:
    """The server replicas: services named resumable-1, resumable-2, ..."""
    return {name: service for name, service in services.items() if REPLICA.fullmatch(name)}


@pytest.fixture(scope="module")
def environments(replicas: dict[str, dict]) -> dict[str, dict[str, str]]:
    return {name: as_mapping(service.get("environment", {})) for name, service in replicas.items()}


def as_mapping(environment: dict | list) -> dict[str, str]:
    """Compose allows ``{NAME: value}`` and ``["NAME=value"]``; values become text."""
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def published_ports(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) of each short-syntax ``ports`` entry."""
    result = []
    for entry in service.get("ports", []):
        parts = str(entry).split("/")[0].split(":")
        assert len(parts) in (2, 3), f"port {entry!r} must publish host:container"
        result.append((int(parts[-2]), int(parts[-1])))
    return result


def volume_mounts(service: dict) -> dict[str, str]:
    """Container path → source of each short-syntax volume."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = str(entry).split(":")[:2]
        mounts[target] = source
    return mounts


def depends_on(service: dict) -> list[str]:
    value = service.get("depends_on", [])
    return list(value)  # a list of names, or a mapping name -> condition


def nginx_directives(path: Path) -> list[list[str]]:
    """Each ``name arg ...;`` of an nginx file, comments dropped, quotes kept."""
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
    statements = re.split(r"[;{}]", text)
    return [shlex.split(s, posix=False) for s in statements if s.strip()]


def directive(path: Path, name: str) -> list[list[str]]:
    """The arguments of every ``name`` directive in the file."""
    return [words[1:] for words in nginx_directives(path) if words[0] == name]


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


def test_compose_has_redis_two_replicas_and_nginx(services: dict, replicas: dict) -> None:
    assert {"redis", "nginx"} <= set(services)
    assert len(replicas) >= 2, f"two or more server replicas, not {sorted(replicas)}"
    assert "resumable" not in services, "the single-server service is replaced by replicas"


def test_redis_keeps_an_append_only_file_on_its_own_volume(
    compose: dict, services: dict, replicas: dict
) -> None:
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    assert str(redis["image"]).split(":")[1].startswith("7")
    command = redis["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    assert "--appendonly" in words
    assert words[words.index("--appendonly") + 1] == "yes"
    mounts = volume_mounts(redis)
    assert "/data" in mounts, "redis:7 writes its append-only file to /data"
    assert mounts["/data"] in compose.get("volumes", {}), "redis data needs a named volume"
    for replica in replicas.values():
        assert mounts["/data"] not in volume_mounts(replica).values()


def test_replicas_are_built_here_and_start_after_redis(replicas: dict) -> None:
    for name, replica in replicas.items():
        build = replica["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").is_file(), name
        assert "redis" in depends_on(replica), name
    images = {replica.get("image") for replica in replicas.values()}
    assert len(images) == 1, f"the replicas run one image, not {images}"


def test_every_variable_is_a_real_setting(environments: dict[str, dict[str, str]]) -> None:
    for name, environment in environments.items():
        assert environment, f"{name} sets no environment"
        named = {variable for variable in environment if variable.startswith(ENV_PREFIX)}
        assert named, f"no RESUMABLE_* variable for {name}"
        unknown = named - SETTING_VARIABLES
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"


def test_variables_have_values_settings_accept(environments: dict[str, dict[str, str]]) -> None:
    for name, environment in environments.items():
        settings = Settings.load(environ=environment)
        assert settings.host == "0.0.0.0", f"{name} must listen on all addresses in a container"
        assert settings.redis_url, "the replicas share state through Redis"
        assert settings.trust_proxy, f"{name} must build Location URLs from nginx's headers"


def test_replicas_share_redis_and_every_setting(environments: dict[str, dict[str, str]]) -> None:
    loaded = {name: Settings.load(environ=env) for name, env in environments.items()}
    first, *others = loaded.values()
    for name, settings in loaded.items():
        assert settings == first, f"{name} differs from the other replicas"
    assert first.redis_url.startswith("redis://redis:6379"), first.redis_url
    assert not others or others[0].redis_prefix == first.redis_prefix


def test_replicas_share_the_uploads_volume_at_the_data_dir(
    compose: dict, replicas: dict, environments: dict[str, dict[str, str]]
) -> None:
    assert "uploads" in compose.get("volumes", {}), "uploads must be a declared named volume"
    for name, replica in replicas.items():
        data_dir = Settings.load(environ=environments[name]).data_dir
        mounts = volume_mounts(replica)
        assert mounts.get(data_dir) == "uploads", f"{name}: {data_dir} is not the uploads volume"


def test_only_nginx_publishes_a_port(services: dict, replicas: dict) -> None:
    for name, replica in replicas.items():
        assert not replica.get("ports"), f"{name} trusts X-Forwarded-*: reachable only via nginx"
    assert (1080, 80) in published_ports(services["nginx"])


def test_nginx_mounts_the_shipped_config_and_its_includes(services: dict) -> None:
    nginx = services["nginx"]
    assert str(nginx["image"]).split(":")[0] == "nginx"
    mounts = volume_mounts(nginx)
    sources = {target: (ROOT / source).resolve() for target, source in mounts.items()}
    assert sources.get(f"{NGINX_CONF_DIR}/conf.d/default.conf") == NGINX_CONFIG
    includes = [args[0] for args in directive(NGINX_CONFIG, "include")]
    assert includes, "deploy/nginx.conf includes its upstream servers and listen port"
    for include in includes:
        assert not include.startswith("/"), f"include {include} must be relative to the conf dir"
        target = f"{NGINX_CONF_DIR}/{include}"
        assert target in sources, f"nginx.conf includes {include}; compose does not mount it"
        assert sources[target] == (DEPLOY / include).resolve()
        assert sources[target].is_file()


def test_nginx_upstreams_are_the_replicas_and_their_port(
    services: dict, replicas: dict, environments: dict[str, dict[str, str]]
) -> None:
    upstreams = [args[0] for args in directive(DEPLOY / "resumable-upstream.conf", "server")]
    expected = [
        f"{name}:{Settings.load(environ=environments[name]).port}" for name in sorted(replicas)
    ]
    assert sorted(upstreams) == expected
    assert set(replicas) <= set(depends_on(services["nginx"]))


def test_nginx_listens_on_the_published_port(services: dict) -> None:
    listens = [args[0] for args in directive(DEPLOY / "resumable-listen.conf", "listen")]
    container_ports = [container for _host, container in published_ports(services["nginx"])]
    assert [int(listen.rsplit(":", 1)[-1]) for listen in listens] == container_ports


def test_nginx_config_streams_and_forwards() -> None:
    """The settings tus needs (tests/test_proxy.py shows each at work)."""
    words = {" ".join(statement) for statement in nginx_directives(NGINX_CONFIG)}
    for needed in (
        "proxy_request_buffering off",
        "proxy_buffering off",
        "client_max_body_size 0",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_set_header X-Forwarded-Proto $scheme",
        'proxy_set_header Forwarded ""',
        'proxy_set_header X-Forwarded-Prefix ""',
        "proxy_pass http://resumable",
    ):
        assert needed in words, f"deploy/nginx.conf lacks {needed!r}"
    forwarded = {args[0] for args in directive(NGINX_CONFIG, "proxy_set_header")}
    assert {"X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-For"} <= forwarded
    assert directive(NGINX_CONFIG, "keepalive"), "keep-alive connections to the replicas"
    for name in ("proxy_read_timeout", "proxy_send_timeout", "client_body_timeout"):
        (value,) = directive(NGINX_CONFIG, name)
        assert int(value[0].rstrip("s")) >= 300, f"{name} {value[0]} is too short for uploads"


def test_docker_compose_accepts_the_file() -> None:
    executable = shutil.which("docker-compose")
    assert executable, "docker-compose is not installed (scripts/test installs it)"
    result = subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def dockerfile_env() -> dict[str, str]:
    environment: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                environment[name] = value
    return environment


def test_dockerfile_base_image_user_and_command() -> None:
    instructions = dockerfile_instructions()
    values = {keyword: arguments for keyword, arguments in instructions}
    assert values["FROM"] == "python:3.11-slim"
    assert values["USER"] not in ("root", "0")
    assert values["EXPOSE"] == "1080"
    command = yaml.safe_load(values["CMD"])  # the exec form is a JSON (so YAML) list
    assert command[:2] == ["resumable", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert any(k == "RUN" and "pip install ." in a for k, a in instructions)


def test_dockerfile_copies_what_pip_install_needs() -> None:
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY":
            for source in shlex.split(arguments)[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repo"


def test_dockerfile_variables_are_settings_and_match_the_volume() -> None:
    environment = dockerfile_env()
    named = {name for name in environment if name.startswith(ENV_PREFIX)}
    assert named <= SETTING_VARIABLES, sorted(named - SETTING_VARIABLES)
    settings = Settings.load(environ={name: environment[name] for name in named})
    volumes = [a for k, a in dockerfile_instructions() if k == "VOLUME"]
    assert volumes and settings.data_dir in yaml.safe_load(volumes[0])
    assert str(settings.port) == dict(dockerfile_instructions())["EXPOSE"]
