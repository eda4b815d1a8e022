"""The deployment files: docker-compose.yml, deploy/, the Dockerfile and .dockerignore.

No Docker engine runs here, so these tests read the files: the compose file
parses, names real settings with values they accept, runs two or more server
replicas of one image built once, that share Redis and the uploads volume
behind nginx and outlast the server's graceful shutdown when stopped, mounts
the shipped deploy/nginx.conf (the file tests/deploy/test_proxy.py runs in front of
real replicas) with include files that name the replicas by their service
names and listen on the published port; and ``docker-compose config -q`` (the
compose CLI's own validation) accepts it.

The image side is followed as Docker would: the build context is computed
from .dockerignore with Docker's matching rules, the Dockerfile's COPY steps
are replayed from that context into a directory, and pip builds the package
there. The dependencies the image installs are deploy/requirements.txt, whose
pins must be the versions this suite runs (scripts/bootstrap installs .venv
under them) and must satisfy pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from resumable.cli import GunicornServer
from resumable.settings import ENV_PREFIX, Settings

from ..support import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
DEPLOY = ROOT / "deploy"
PINS = DEPLOY / "requirements.txt"
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


DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


def seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``1.5h``) in seconds."""
    text = str(duration)
    parts = DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


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


def test_one_replica_builds_the_image_the_others_run(replicas: dict) -> None:
    """``up --build`` builds the image once, and nothing tries to pull it.

    The image exists only on this machine. Compose v2 honours ``pull_policy:
    never``; docker-compose v1 accepts the key but ignores it, and pulls an image
    that is missing when it reaches a service: depending on the building replica
    makes it build first.
    """
    builders = [name for name, replica in replicas.items() if "build" in replica]
    assert len(builders) == 1, f"exactly one replica builds the image, not {builders}"
    (builder,) = builders
    build = replicas[builder]["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE
    images = {replica.get("image") for replica in replicas.values()}
    assert len(images) == 1 and None not in images, f"the replicas run one image: {images}"
    for name, replica in replicas.items():
        assert "redis" in depends_on(replica), f"{name} starts after redis"
        if name != builder:
            assert replica.get("pull_policy") == "never", f"{name} must not pull {images}"
            assert builder in depends_on(replica), f"{name} starts after {builder} builds"


def test_replicas_outlast_the_graceful_shutdown(replicas: dict) -> None:
    """Docker's default 10 s would kill a replica while gunicorn still drains it."""
    graceful = GunicornServer(Settings()).cfg.graceful_timeout
    for name, replica in replicas.items():
        assert "stop_grace_period" in replica, f"{name} has Docker's default 10 s"
        grace = seconds(replica["stop_grace_period"])
        assert grace > graceful, f"{name}: stop_grace_period {grace} s <= {graceful} s"


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
    """The settings tus needs (tests/deploy/test_proxy.py shows each at work)."""
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


S3_REPLICA = re.compile(r"resumable-s3-\d+")
#: The standard AWS credential chain's variables: not settings, read by boto3.
AWS_VARIABLES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


@pytest.fixture(scope="module")
def s3_replicas(services: dict) -> dict[str, dict]:
    """The replicas of the "s3" profile: resumable-s3-1, resumable-s3-2, ..."""
    return {name: service for name, service in services.items() if S3_REPLICA.fullmatch(name)}


def test_the_s3_profile_has_minio_a_bucket_two_replicas_and_nginx(
    services: dict, s3_replicas: dict
) -> None:
    assert sorted(s3_replicas) == ["resumable-s3-1", "resumable-s3-2"]
    for name in ("minio", "minio-bucket", "nginx-s3", *s3_replicas):
        assert services[name].get("profiles") == ["s3"], f"{name} belongs to the s3 profile"
    for name in ("redis", "resumable-1", "resumable-2", "nginx"):
        assert "profiles" not in services[name], f"{name} runs without a profile"
    assert "mc mb --ignore-existing local/uploads" in " ".join(services["minio-bucket"]["command"])


def test_s3_replicas_share_bucket_redis_and_settings_but_no_disk(
    services: dict, s3_replicas: dict, environments: dict[str, dict[str, str]]
) -> None:
    s3_environments = {name: as_mapping(service["environment"])
                       for name, service in s3_replicas.items()}
    minio = as_mapping(services["minio"]["environment"])
    loaded = {}
    for name, environment in s3_environments.items():
        unknown = set(environment) - SETTING_VARIABLES - AWS_VARIABLES
        assert not unknown, f"{name}: not settings: {sorted(unknown)}"
        assert environment["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
        assert environment["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
        settings = Settings.load(environ={k: v for k, v in environment.items()
                                          if k not in AWS_VARIABLES})
        loaded[name] = settings
        replica = s3_replicas[name]
        assert not volume_mounts(replica), f"{name} shares no disk: its data dir is its own"
        assert not replica.get("ports"), f"{name} trusts X-Forwarded-*: reachable only via nginx"
        assert {"redis", "minio-bucket"} <= set(depends_on(replica))
    first = next(iter(loaded.values()))
    assert all(settings == first for settings in loaded.values())
    assert (first.s3_bucket, first.s3_endpoint) == ("uploads", "http://minio:9000")
    assert first.trust_proxy and first.redis_url.startswith("redis://redis:6379")
    disk = Settings.load(environ=next(iter(environments.values())))
    assert first.redis_prefix != disk.redis_prefix, "the two shapes keep their keys apart"


def test_nginx_s3_fronts_the_s3_replicas(services: dict, s3_replicas: dict) -> None:
    nginx = services["nginx-s3"]
    mounts = {target: (ROOT / source).resolve() for target, source in volume_mounts(nginx).items()}
    upstream_file = DEPLOY / "resumable-upstream-s3.conf"
    assert mounts[f"{NGINX_CONF_DIR}/conf.d/default.conf"] == NGINX_CONFIG
    assert mounts[f"{NGINX_CONF_DIR}/resumable-upstream.conf"] == upstream_file.resolve()
    assert mounts[f"{NGINX_CONF_DIR}/resumable-listen.conf"] == (
        DEPLOY / "resumable-listen.conf").resolve()
    upstreams = sorted(args[0] for args in directive(upstream_file, "server"))
    assert upstreams == [f"{name}:1080" for name in sorted(s3_replicas)]
    assert set(s3_replicas) <= set(depends_on(nginx))
    assert published_ports(nginx) == [(1081, 80)]


def test_docker_compose_accepts_the_file() -> None:
    executable = shutil.which("docker-compose")
    assert executable, "docker-compose is not installed (scripts/test installs it)"
    result = subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), "--profile", "s3", "config", "-q"],
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


def image_steps() -> list[tuple[str, str, str]]:
    """(INSTRUCTION, arguments, the WORKDIR it runs in) of each instruction."""
    steps = []
    workdir = "/"
    for keyword, arguments in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, arguments))
        steps.append((keyword, arguments, workdir))
    return steps


def pip_installs() -> list[tuple[int, list[str], str]]:
    """(step index, arguments after ``pip install``, WORKDIR) of each pip install run."""
    found = []
    for index, (keyword, arguments, workdir) in enumerate(image_steps()):
        if keyword != "RUN":
            continue
        for command in arguments.split("&&"):
            words = shlex.split(command)
            if "pip" in words and "install" in words:
                assert words[:2] == ["pip", "install"], f"RUN {command}: write it pip install ..."
                found.append((index, words[2:], workdir))
    return found


def pinned_install() -> tuple[int, list[str], str]:
    """The ``pip install -r <pins>`` that installs the dependencies."""
    installs = [install for install in pip_installs() if "-r" in install[1]]
    assert len(installs) == 1, f"one pip install -r of the pinned dependencies: {installs}"
    return installs[0]


def package_install() -> tuple[int, list[str], str]:
    """The ``pip install .`` that installs the package itself."""
    installs = [install for install in pip_installs() if "." in install[1]]
    assert len(installs) == 1, f"one pip install of the package: {installs}"
    return installs[0]


# --------------------------------------------------------------------------
# The build context (.dockerignore), the COPY steps, and what pip installs
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IgnorePattern:
    text: str
    exception: bool  # a "!" line: lets matching paths back in
    regex: re.Pattern[str]


def glob_regex(pattern: str) -> str:
    """Docker's reading of a pattern: ``*`` and ``?`` stay inside one path segment,
    ``**`` spans any number of them (``**/`` also none)."""
    regex, i = "^", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            regex += ".*" if i == len(pattern) else "(.*/)?"
            continue
        character = pattern[i]
        regex += {"*": "[^/]*", "?": "[^/]"}.get(character, re.escape(character))
        i += 1
    return regex + "$"


def dockerignore() -> list[IgnorePattern]:
    """The patterns of .dockerignore, cleaned as Docker cleans them."""
    patterns = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        text = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        assert not set(text) & set("[]\\"), f"{line!r}: only *, ? and ** are modelled here"
        patterns.append(IgnorePattern(text, exception, re.compile(glob_regex(text))))
    return patterns


def in_build_context(path: str, patterns: list[IgnorePattern]) -> bool:
    """Docker's rule: the last pattern matching the path, or a directory above it, decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        if any(pattern.regex.match(candidate) for candidate in candidates):
            included = pattern.exception
    return included


def build_context() -> set[str]:
    """The files of the working tree ``docker build .`` sends (and COPY can see)."""
    patterns = dockerignore()
    exceptions = [pattern.text for pattern in patterns if pattern.exception]
    files: set[str] = set()
    for directory, subdirectories, names in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        prefix = "" if relative == "." else relative + "/"
        # Like Docker, skip a directory that is left out unless an exception may
        # reach inside it: .venv and node_modules hold tens of thousands of files.
        subdirectories[:] = [
            name
            for name in subdirectories
            if in_build_context(prefix + name, patterns)
            or any(e.startswith(prefix + name + "/") or set(e) & set("*?") for e in exceptions)
        ]
        files.update(prefix + name for name in names if in_build_context(prefix + name, patterns))
    return files


def copy_sources() -> list[str]:
    return [
        posixpath.normpath(source)
        for keyword, arguments, _workdir in image_steps()
        if keyword == "COPY"
        for source in shlex.split(arguments)[:-1]
    ]


def replay_copies(context: set[str], root: Path, before: int) -> None:
    """Run the COPY steps that come before step ``before`` into ``root``, the
    image's file system, taking files from the build context only."""
    for keyword, arguments, workdir in image_steps()[:before]:
        if keyword != "COPY":
            continue
        words = shlex.split(arguments)
        assert not words[0].startswith("--"), f"COPY {arguments}: flags are not modelled here"
        *sources, destination = words
        into_directory = destination.endswith("/") or len(sources) > 1
        destination = posixpath.normpath(posixpath.join(workdir, destination))
        for source in map(posixpath.normpath, sources):
            assert source != ".", "COPY . sends the whole context"
            if source in context:
                target = destination
                if into_directory:
                    target = posixpath.join(destination, posixpath.basename(source))
                pairs = [(source, target)]
            else:  # a directory: its contents go into the destination
                inside = sorted(f for f in context if f.startswith(source + "/"))
                assert inside, f"COPY {source}: not in the build context"
                pairs = [(f, posixpath.join(destination, f[len(source) + 1 :])) for f in inside]
            for file, target in pairs:
                path = root / target.lstrip("/")
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(ROOT / file, path)


def test_build_context_is_what_the_image_copies_and_nothing_else() -> None:
    context = build_context()
    sources = copy_sources()
    for source in sources:
        on_disk = ROOT / source
        assert on_disk.exists(), f"COPY {source}: no such file in the repository"
        if on_disk.is_file():
            assert source in context, f"COPY {source}: left out by .dockerignore"
            continue
        wanted = {
            path.relative_to(ROOT).as_posix()
            for path in on_disk.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }
        assert wanted, f"COPY {source}: an empty directory"
        assert wanted <= context, f"left out by .dockerignore: {sorted(wanted - context)}"
    extra = sorted(f for f in context if not any(f == s or f.startswith(s + "/") for s in sources))
    assert not extra, f"sent to the builder, never copied: {extra[:20]}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        "data/uploads/5bac9a96b7d293d075b579b3b74c4df2",
        ".git/HEAD",
        "tests/protocol/test_smoke.py",
        "tests/js/node_modules/tus-js-client/package.json",
        "node_modules/.package-lock.json",
        "frontend/src/main.js",
        "frontend/node_modules/@uppy/core/package.json",
        "benchmarks/compare.py",
        "bench-results/patch_throughput.json",
        ".hypothesis/examples/0a/1b",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        "resumable.egg-info/PKG-INFO",
        "build/lib/resumable/app.py",
        "dist/resumable-0.1.0-py3-none-any.whl",
        "resumable/__pycache__/app.cpython-311.pyc",
        "resumable/registry/__pycache__/redis.cpython-311.pyc",
        "deploy/nginx.conf",
        "docker-compose.yml",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    """Whether or not the path exists in this checkout, it never reaches the builder."""
    assert not in_build_context(path, dockerignore())


def test_dockerfile_base_image_user_and_command() -> None:
    instructions = dockerfile_instructions()
    values = {keyword: arguments for keyword, arguments in instructions}
    assert values["FROM"] == "python:3.11-slim"
    assert values["USER"] not in ("root", "0")
    assert values["EXPOSE"] == "1080"
    command = yaml.safe_load(values["CMD"])  # the exec form is a JSON (so YAML) list
    assert command[:2] == ["resumable", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"


def test_the_image_installs_the_pins_then_the_package_alone(tmp_path: Path) -> None:
    """The image's dependencies are deploy/requirements.txt, hash-checked; the package
    install adds none (``--no-deps``), so nothing is resolved at build time."""
    index, arguments, workdir = pinned_install()
    assert "--require-hashes" in arguments
    replay_copies(build_context(), tmp_path, before=index)
    requirements = posixpath.join(workdir, arguments[arguments.index("-r") + 1])
    staged = tmp_path / requirements.lstrip("/")
    assert staged.is_file(), f"-r {requirements}: not copied before the install"
    assert staged.read_bytes() == PINS.read_bytes()
    package_index, _arguments, _workdir = package_install()
    assert package_index > index, "the package is installed after its pinned dependencies"
    for _index, other, _workdir in pip_installs():
        if "-r" not in other:
            assert "--no-deps" in other, f"pip install {' '.join(other)} may resolve new versions"


def test_dockerfile_copies_what_pip_install_needs(tmp_path: Path) -> None:
    """What the build of pyproject.toml reads is in place when ``pip install .`` runs."""
    index, _arguments, workdir = package_install()
    replay_copies(build_context(), tmp_path, before=index)
    project_dir = tmp_path / workdir.lstrip("/")
    project = tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]
    assert (project_dir / project["readme"]).is_file()
    for pattern in project["license-files"]:
        assert list(project_dir.glob(pattern)), f"license file {pattern} is not copied"
    for module in ROOT.joinpath("resumable").rglob("*.py"):
        assert (project_dir / module.relative_to(ROOT)).is_file(), module.relative_to(ROOT)
    assert list(project_dir.glob("resumable/demo/static/*")), "the demo page ships in the package"


def test_the_copied_files_build_a_wheel_with_its_license_and_no_warning(tmp_path: Path) -> None:
    """A real build of what the image copies: setuptools warned that a
    ``license = {text = ...}`` table is deprecated, and the wheel carries LICENSE."""
    index, _arguments, workdir = package_install()
    image = tmp_path / "image"
    replay_copies(build_context(), image, before=index)
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels)]
        + [str(image / workdir.lstrip("/"))],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
    )
    output = (result.stdout + result.stderr).replace(str(tmp_path), "<tmp>")
    assert result.returncode == 0, output
    assert "license" not in output.lower(), output
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    (wheel,) = wheels.glob(f"{canonicalize_name(project['name']).replace('-', '_')}-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (dist_info,) = {name.split("/")[0] for name in names if ".dist-info/" in name}
        assert archive.read(f"{dist_info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        metadata = archive.read(f"{dist_info}/METADATA").decode().splitlines()
    assert "License-Expression: MIT" in metadata
    assert "License-File: LICENSE" in metadata
    assert any(name.startswith("resumable/demo/static/") for name in names)


def test_dockerfile_variables_are_settings_and_match_the_volume() -> None:
    environment = dockerfile_env()
    named = {name for name in environment if name.startswith(ENV_PREFIX)}
    assert named <= SETTING_VARIABLES, sorted(named - SETTING_VARIABLES)
    settings = Settings.load(environ={name: environment[name] for name in named})
    volumes = [a for k, a in dockerfile_instructions() if k == "VOLUME"]
    assert volumes and settings.data_dir in yaml.safe_load(volumes[0])
    assert str(settings.port) == dict(dockerfile_instructions())["EXPOSE"]


# --------------------------------------------------------------------------
# The license and the pinned dependencies (deploy/requirements.txt)
# --------------------------------------------------------------------------


def test_the_license_is_an_spdx_expression_with_its_file() -> None:
    document = tomllib.loads(PYPROJECT.read_text())
    project = document["project"]
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the resumable authors" in text
    requires = [Requirement(line) for line in document["build-system"]["requires"]]
    (setuptools,) = [r for r in requires if canonicalize_name(r.name) == "setuptools"]
    # setuptools reads an SPDX string and license-files from 77 on.
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("77.0")


def read_pins() -> dict[str, tuple[Requirement, list[str]]]:
    """Each requirement of deploy/requirements.txt with its hashes, by normalized name."""
    pins = {}
    for line in PINS.read_text().replace("\\\n", " ").splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        hashes = [w.removeprefix("--hash=") for w in words if w.startswith("--hash=")]
        requirement = Requirement(" ".join(w for w in words if not w.startswith("--hash=")))
        pins[canonicalize_name(requirement.name)] = (requirement, hashes)
    return pins


def pinned_version(requirement: Requirement) -> str:
    (specifier,) = requirement.specifier
    return specifier.version


def applies_here(requirement: Requirement) -> bool:
    """Whether pip would install the requirement on this Python and platform."""
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def test_the_pins_are_exact_and_hashed() -> None:
    pins = read_pins()
    assert pins, "deploy/requirements.txt pins nothing"
    for name, (requirement, hashes) in pins.items():
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{requirement}: pin it"
        assert "*" not in specifiers[0].version, f"{requirement}: pin one version"
        assert not requirement.extras and not requirement.url, f"{requirement}: a plain pin"
        assert hashes, f"{name}: the image installs with --require-hashes"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), hashes


def test_the_pins_cover_and_satisfy_the_runtime_dependencies() -> None:
    pins = read_pins()
    for line in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]:
        dependency = Requirement(line)
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{dependency.name} is not pinned: run scripts/lock-requirements"
        version = pinned_version(pins[name][0])
        assert dependency.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside pyproject.toml's {dependency.specifier}"
        )


def test_the_pins_include_what_each_pin_depends_on() -> None:
    """pip --require-hashes refuses a dependency without a hash: nothing may go unpinned."""
    pins = read_pins()
    for name, (requirement, _hashes) in pins.items():
        if not applies_here(requirement):
            continue
        for line in importlib.metadata.requires(name) or []:
            needed = Requirement(line)
            if applies_here(needed):
                assert canonicalize_name(needed.name) in pins, f"{name} needs {needed}: not pinned"


def test_the_suite_runs_the_pinned_versions() -> None:
    """body.py relies on gunicorn's internals: the image must ship what was tested here."""
    pins = read_pins()
    for name, (requirement, _hashes) in pins.items():
        if not applies_here(requirement):
            continue
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed: run scripts/bootstrap")
        assert Version(installed) == Version(pinned_version(requirement)), (
            f"{name} {installed} is installed, the image ships {pinned_version(requirement)}:"
            " run scripts/bootstrap"
        )
