"""A real three-node RabbitMQ cluster for the cluster tests, beside the machine's own broker.

:func:`running_cluster` starts ``rw1@localhost``, ``rw2@localhost`` and ``rw3@localhost`` (the
prefix is configurable) from the installed RabbitMQ, clusters them, and stops and deletes them
afterwards. The machine's node (``rabbit@localhost``) is never touched: every node here has its
own ports, data and log directories, config, enabled-plugins file and env file, and the CLI is
only ever pointed at these nodes with ``-n``.

Why it looks the way it does:

- The nodes use the Erlang cookie the ``rabbitmqctl`` on ``PATH`` uses (as root on Debian that
  is ``/var/lib/rabbitmq/.erlang.cookie``: the wrapper switches to the ``rabbitmq`` user), copied
  into a private ``HOME``, so ``rabbitmqctl -n rw1@localhost ...`` works from any shell.
- The nodes run as the current user from the real ``rabbitmq-server`` script, not the Debian
  wrapper: the wrapper would ``su rabbitmq`` (who cannot write our temp directory) and send the
  node's output over the machine node's ``/var/log/rabbitmq/startup_log``.
- One session at a time owns a prefix, through a lock file: a node with our names that is up
  while nobody holds the lock was left by a crashed session and is stopped; if another live
  session holds the lock, the next prefix (``rwb``, ``rwc``, ...) is used instead of stopping
  its nodes. Data lives in a fixed directory per prefix, so a crashed session's leftovers are
  removed by the next one. Sessions choose ports and boot their nodes one at a time (a
  second lock), since a port only looks taken once a node has bound it, and each prefix
  prefers its own block of ports (``rwb`` 100 above ``rw``).
- Every listener binds to 127.0.0.1 and each node runs one scheduler (``+S 1:1``): the machine
  is shared and small.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import httpx
from tlstools import TlsFiles, make_tls_files

AUTH = ("guest", "guest")
LOOPBACK = "127.0.0.1"
#: The Debian package's real scripts; ``/usr/sbin/rabbitmq-server`` is a wrapper around them.
PACKAGE_SBIN = Path("/usr/lib/rabbitmq/bin")
#: Ports this module never hands out: the machine node's, epmd's, and the range the
#: RabbitMQ CLI tools take their own distribution ports from.
RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})

#: A node reference: its 1-based index in the cluster or its full name (``rw2@localhost``).
NodeRef = int | str


class ClusterError(RuntimeError):
    """The test cluster could not be started, changed or stopped as asked."""


def server_script() -> str:
    """The ``rabbitmq-server`` that starts a node as the current user (see the module doc)."""
    on_path = shutil.which("rabbitmq-server")
    real = PACKAGE_SBIN / "rabbitmq-server"
    if on_path and real.exists() and "su rabbitmq" in Path(on_path).read_text(errors="replace"):
        return str(real)
    if on_path is None:
        raise ClusterError("rabbitmq-server is not on PATH: install RabbitMQ to run cluster tests")
    return on_path


def cli_env() -> dict[str, str]:
    """The environment for ``rabbitmqctl``: ours, minus anything that would steer it to a
    node or cookie other than the ones named on its command line."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}


def cli_cookie_file() -> Path:
    """The Erlang cookie file ``rabbitmqctl`` reads, as the CLI itself reports it."""
    result = subprocess.run(
        ["rabbitmq-diagnostics", "-q", "erlang_cookie_sources"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Cookie file path: (\S+)", result.stdout)
    if found is None:
        return Path.home() / ".erlang.cookie"
    return Path(found.group(1))


def port_is_free(port: int) -> bool:
    """Whether a listener could bind ``port`` (on every interface, as RabbitMQ's own
    start-up check of the distribution port does)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def pick_port(preferred: int, taken: set[int]) -> int:
    """``preferred`` if it is free, else the first free one of ``preferred + 10``, ``+ 20``...;
    added to ``taken`` so one cluster never hands out a port twice."""
    for candidate in range(preferred, preferred + 1000, 10):
        if candidate not in taken and candidate not in RESERVED_PORTS and port_is_free(candidate):
            taken.add(candidate)
            return candidate
    raise ClusterError(f"no free port near {preferred}")


def process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (the detached VM's parent is init, which reaps it).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def poll(predicate: Any, *, timeout: float, interval: float = 0.25, message: str) -> Any:
    """Call ``predicate`` until it returns something truthy; fail with ``message`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for {message}")
        time.sleep(interval)


@dataclass
class ClusterNode:
    """One node of the test cluster: its name, ports and files."""

    index: int
    name: str
    amqp_port: int
    dist_port: int
    management_port: int
    directory: Path
    tls_port: int | None = None
    #: The OS pid of its Erlang VM (beam.smp), known once it has booted.
    os_pid: int | None = None

    @property
    def management_api(self) -> str:
        """Base URL of this node's management HTTP API (no trailing slash)."""
        return f"http://{LOOPBACK}:{self.management_port}/api"

    def amqp_url(self, vhost: str = "/", user: str = "guest", password: str = "guest") -> str:
        """``amqp://`` URL of ``vhost`` on this node."""
        credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"amqp://{credentials}@{LOOPBACK}:{self.amqp_port}/{_vhost_path(vhost)}"

    @property
    def log_file(self) -> Path:
        return self.directory / "log" / f"{self.name}.log"

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_file.exists():
            return "(no log written)"
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


def _vhost_path(vhost: str) -> str:
    # aiormq takes the vhost from the URL path; "/" is the empty path, not "%2F".
    return "" if vhost == "/" else quote(vhost, safe="")


@dataclass
class RabbitCluster:
    """Three (``size``) RabbitMQ nodes clustered on this machine, with the operations tests
    need to drill failures: stop or kill a node, bring it back, find a queue's leader.

    Build it with :func:`running_cluster`, which also stops it. Node arguments (``NodeRef``)
    are a 1-based index or a node name as the broker reports it (``"rw2@localhost"``).
    """

    base_dir: Path
    prefix: str = "rw"
    size: int = 3
    #: The node with the extra TLS listener (verify_peer, fail_if_no_peer_cert).
    tls_node: int = 3
    #: Added to every preferred port (5681.., 15681.., 25681.., 5693): a second session's
    #: cluster gets its own block, so a node one session killed and is about to restart
    #: does not look like free ports to the other.
    port_offset: int = 0
    nodes: list[ClusterNode] = field(default_factory=list)
    tls: TlsFiles | None = None
    #: Seconds :meth:`start` took, from the first launch to all nodes running as one cluster.
    startup_seconds: float = 0.0

    # -- naming and URLs --------------------------------------------------------------------

    def node_names(self) -> list[str]:
        return [f"{self.prefix}{index}@localhost" for index in range(1, self.size + 1)]

    def node(self, ref: NodeRef) -> ClusterNode:
        """The node with this 1-based index or name."""
        for node in self.nodes:
            if ref in (node.index, node.name):
                return node
        raise KeyError(f"no node {ref!r} in this cluster ({', '.join(self.node_names())})")

    def amqp_url(self, ref: NodeRef, vhost: str = "/") -> str:
        """The guest ``amqp://`` URL of ``vhost`` on one node."""
        return self.node(ref).amqp_url(vhost)

    def amqp_urls(self, vhost: str = "/") -> str:
        """Every node's URL of ``vhost``, ``;``-joined, the form RABBITWORKER_AMQP_URL takes."""
        return ";".join(node.amqp_url(vhost) for node in self.nodes)

    def management_api(self, ref: NodeRef) -> str:
        return self.node(ref).management_api

    @property
    def tls_port(self) -> int:
        port = self.node(self.tls_node).tls_port
        assert port is not None
        return port

    def amqps_url(self, vhost: str = "/", *, client_cert: bool = True) -> str:
        """The ``amqps://`` URL of the TLS listener, with the CA (and, unless
        ``client_cert=False``, the client certificate and key) in the query, where aiormq
        reads them from."""
        assert self.tls is not None, "the cluster has not been started"
        query = {"cafile": str(self.tls.ca)}
        if client_cert:
            query |= {"certfile": str(self.tls.client_cert), "keyfile": str(self.tls.client_key)}
        return (
            f"amqps://guest:guest@localhost:{self.tls_port}/{_vhost_path(vhost)}?{urlencode(query)}"
        )

    # -- rabbitmqctl ------------------------------------------------------------------------

    def ctl(
        self, ref: NodeRef, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rabbitmqctl -q -n NODE ARGS`` (``ref`` may also be any node name)."""
        name = ref if isinstance(ref, str) else self.node(ref).name
        result = subprocess.run(
            ["rabbitmqctl", "-q", "-n", name, *args],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"rabbitmqctl -n {name} {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def running_nodes(self, via: NodeRef | None = None) -> set[str]:
        """The nodes ``cluster_status`` reports running, asked of ``via`` or else of the
        first node that answers."""
        candidates = [self.node(via)] if via is not None else self.nodes
        for node in candidates:
            if not process_alive(node.os_pid):
                continue
            result = self.ctl(node.name, "cluster_status", "--formatter", "json", check=False)
            if result.returncode == 0:
                return set(json.loads(result.stdout)["running_nodes"])
        return set()

    # -- start and stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Stop leftovers of a crashed session, then launch, await and cluster every node."""
        self.stop_leftovers()
        shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir.mkdir(parents=True)
        began = time.monotonic()
        home = self.base_dir / "home"
        home.mkdir()
        shutil.copyfile(cli_cookie_file(), home / ".erlang.cookie")
        (home / ".erlang.cookie").chmod(0o400)
        self.tls = make_tls_files(self.base_dir / "tls")
        # A port is only taken once a node has bound it: another session choosing ports
        # before then would see ours free, so choosing and booting happen under one lock.
        with _exclusive(Path(tempfile.gettempdir()) / "rabbitworker-cluster-ports.lock"):
            taken: set[int] = set()
            base = self.port_offset
            for index, name in enumerate(self.node_names(), start=1):
                node = ClusterNode(
                    index=index,
                    name=name,
                    amqp_port=pick_port(base + 5680 + index, taken),
                    dist_port=pick_port(base + 25680 + index, taken),
                    management_port=pick_port(base + 15680 + index, taken),
                    directory=self.base_dir / name.split("@")[0],
                    tls_port=(
                        pick_port(base + 5690 + index, taken) if index == self.tls_node else None
                    ),
                )
                self._write_node_files(node)
                self.nodes.append(node)
            # Booting in parallel roughly thirds the wait; the join below is sequential.
            for node in self.nodes:
                self._launch(node)
            for node in self.nodes:
                self._await_boot(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node.index, "stop_app")
            self.ctl(node.index, "join_cluster", first.name)
            self.ctl(node.index, "start_app")
        self.wait_all_running()
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every node's VM (``rabbitmqctl stop``, in parallel) and wait for it to exit;
        a VM that does not exit within a minute is killed. Safe to call more than once."""
        # A node whose boot was never awaited (start failed half-way) has no pid yet.
        for node in self.nodes:
            node.os_pid = node.os_pid or self._eval_os_pid(node.name)
        stopping = [
            (node, self._popen_ctl(node.name, "stop"))
            for node in self.nodes
            if process_alive(node.os_pid)
        ]
        for node, process in stopping:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            self._wait_exit(node.os_pid, node.name)

    def stop_leftovers(self) -> None:
        """Stop nodes with this cluster's names that a crashed session left running."""
        for name in self.node_names():
            if self.ctl(name, "ping", timeout=30, check=False).returncode != 0:
                continue
            pid = self._eval_os_pid(name)
            self.ctl(name, "stop", check=False)
            self._wait_exit(pid, name)

    # -- drills -----------------------------------------------------------------------------

    def stop_node(self, ref: NodeRef) -> None:
        """Stop RabbitMQ on one node (``rabbitmqctl stop_app``); its VM keeps running."""
        self.ctl(ref, "stop_app")

    def start_node(self, ref: NodeRef) -> None:
        """Start RabbitMQ again on a node :meth:`stop_node` stopped, and wait until it runs."""
        self.ctl(ref, "start_app")
        self.ctl(ref, "await_startup")

    def kill_node(self, ref: NodeRef) -> None:
        """SIGKILL the node's Erlang VM, as a power cut would; :meth:`restart_node` brings it
        back."""
        node = self.node(ref)
        pid = node.os_pid or self._eval_os_pid(node.name)
        if pid is None:
            raise ClusterError(f"{node.name} has no OS pid: is it running?")
        os.kill(pid, signal.SIGKILL)
        self._wait_exit(pid, node.name)

    def restart_node(self, ref: NodeRef) -> None:
        """Boot a killed (or stopped with ``rabbitmqctl stop``) node's VM again with its own
        data; it rejoins the cluster by itself."""
        node = self.node(ref)
        self._launch(node)
        self._await_boot(node)

    def restore(self) -> list[str]:
        """Bring back every node that is not running, whatever stopped it; returns the names
        of the nodes it brought back. Cheap when nothing is down (one HTTP request)."""
        if self._all_running_per_management():
            return []
        running = self.running_nodes()
        restored = []
        for node in self.nodes:
            if node.name in running:
                continue
            if process_alive(node.os_pid):
                self.start_node(node.index)
            else:
                self.restart_node(node.index)
            restored.append(node.name)
        self.wait_all_running()
        return restored

    def wait_all_running(self, timeout: float = 90) -> None:
        expected = set(self.node_names())
        poll(
            lambda: self.running_nodes() == expected,
            timeout=timeout,
            interval=0.5,
            message=f"{', '.join(sorted(expected))} running as one cluster",
        )

    # -- management API ---------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A management API request, to the first node whose API answers (a stopped node's
        does not); raises for an HTTP error status."""
        errors = []
        for node in self.nodes:
            try:
                response = httpx.request(
                    method, f"{node.management_api}/{path}", auth=AUTH, timeout=15, **kwargs
                )
            except httpx.TransportError as error:
                errors.append(f"{node.name}: {error!r}")
                continue
            response.raise_for_status()
            return response
        raise ClusterError(f"no management API answered {method} {path}: {'; '.join(errors)}")

    def queue_info(self, vhost: str, queue: str) -> dict[str, Any]:
        return self.api("GET", f"queues/{quote(vhost, safe='')}/{quote(queue, safe='')}").json()  # type: ignore[no-any-return]

    def queue_leader(self, vhost: str, queue: str) -> str:
        """The node name of a queue's leader (quorum) or home node (classic)."""
        info = self.queue_info(vhost, queue)
        return str(info.get("leader") or info["node"])

    def create_vhost(self) -> str:
        """A fresh vhost on the cluster with full permissions for guest; returns its name."""
        vhost = f"rw-cluster-{uuid.uuid4().hex[:12]}"
        path = quote(vhost, safe="")
        self.api("PUT", f"vhosts/{path}")
        self.api(
            "PUT",
            f"permissions/{path}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        return vhost

    def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it (no error if it is already gone)."""
        try:
            self.api("DELETE", f"vhosts/{quote(vhost, safe='')}")
        except httpx.HTTPStatusError as error:
            if error.response.status_code != 404:
                raise

    # -- internals --------------------------------------------------------------------------

    def _write_node_files(self, node: ClusterNode) -> None:
        node.directory.mkdir(parents=True)
        (node.directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
        # Our own (empty) env file, so /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@...)
        # is not read.
        (node.directory / "rabbitmq-env.conf").write_text("")
        config = [
            f"management.tcp.ip = {LOOPBACK}",
            f"management.tcp.port = {node.management_port}",
        ]
        if node.tls_port is not None:
            assert self.tls is not None
            config += [
                f"listeners.ssl.default = {LOOPBACK}:{node.tls_port}",
                f"ssl_options.cacertfile = {self.tls.ca}",
                f"ssl_options.certfile = {self.tls.server_cert}",
                f"ssl_options.keyfile = {self.tls.server_key}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = true",
            ]
        (node.directory / "rabbitmq.conf").write_text("\n".join(config) + "\n")

    def _node_env(self, node: ClusterNode) -> dict[str, str]:
        env = cli_env()
        env.update(
            {
                "HOME": str(self.base_dir / "home"),
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
                "RABBITMQ_NODE_PORT": str(node.amqp_port),
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_MNESIA_BASE": str(node.directory / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.directory / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.directory / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(node.directory / "rabbitmq.conf"),
                # Deliberately absent, so /etc/rabbitmq/advanced.config is not read either.
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.directory / "advanced.config"),
                "RABBITMQ_CONF_ENV_FILE": str(node.directory / "rabbitmq-env.conf"),
                "RABBITMQ_PID_FILE": str(node.directory / "node.pid"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    f"+S 1:1 -kernel inet_dist_use_interface {{{LOOPBACK.replace('.', ',')}}}"
                ),
                "ERL_CRASH_DUMP": str(node.directory / "erl_crash.dump"),
            }
        )
        return env

    def _launch(self, node: ClusterNode) -> None:
        (node.directory / "erl_crash.dump").unlink(missing_ok=True)
        node.os_pid = None
        result = subprocess.run(
            [server_script(), "-detached"],
            env=self._node_env(node),
            cwd=node.directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                f"rabbitmq-server -detached for {node.name} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )

    def _await_boot(self, node: ClusterNode, timeout: float = 120) -> None:
        """Wait until the detached node has booted. ``await_startup`` fails at once while
        the node has not registered with epmd yet, so it is retried; a crash dump means the
        boot failed (a port taken meanwhile, a bad config) and ends the wait with the log."""
        crash_dump = node.directory / "erl_crash.dump"

        def booted() -> bool:
            if crash_dump.exists():
                raise ClusterError(f"{node.name} failed to boot; its log ends:\n{node.log_tail()}")
            result = self.ctl(node.name, "await_startup", "--timeout", "60", check=False)
            return result.returncode == 0

        poll(booted, timeout=timeout, interval=0.5, message=f"{node.name} to boot")
        node.os_pid = self._eval_os_pid(node.name)

    def _eval_os_pid(self, name: str) -> int | None:
        result = self.ctl(name, "eval", "os:getpid().", check=False)
        digits = result.stdout.strip().strip('"')
        return int(digits) if result.returncode == 0 and digits.isdigit() else None

    def _wait_exit(self, pid: int | None, name: str, timeout: float = 60) -> None:
        """Wait for a VM to exit and its name to leave epmd, so its ports and name are free."""
        try:
            poll(lambda: not process_alive(pid), timeout=timeout, message=f"{name} to exit")
        except ClusterError:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            poll(lambda: not process_alive(pid), timeout=10, message=f"{name} to die")
        poll(
            lambda: self.ctl(name, "ping", "--timeout", "5", check=False).returncode != 0,
            timeout=30,
            message=f"{name} to leave epmd",
        )

    def _popen_ctl(self, name: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["rabbitmqctl", "-q", "-n", name, *args],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def _all_running_per_management(self) -> bool:
        try:
            nodes = self.api("GET", "nodes?columns=name,running").json()
        except (ClusterError, httpx.HTTPError):
            return False
        running = {entry["name"] for entry in nodes if entry.get("running")}
        return running == set(self.node_names())


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (waiting for it) for the block."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _claim_prefix(prefix: str) -> tuple[IO[str], str, int]:
    """Lock ``prefix`` for this session, or the first of ``prefix`` + b, c, ... that no
    other live session holds; returns the lock, the prefix and its slot (0, 1, ...). The
    lock goes with the process, so a crash releases it."""
    for slot, candidate in enumerate([prefix, *(prefix + letter for letter in "bcdefgh")]):
        handle = (Path(tempfile.gettempdir()) / f"rabbitworker-cluster-{candidate}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return handle, candidate, slot
    raise ClusterError(f"every test cluster prefix from {prefix!r} is held by another session")


@contextlib.contextmanager
def running_cluster(prefix: str = "rw", size: int = 3) -> Iterator[RabbitCluster]:
    """A started :class:`RabbitCluster`, stopped and deleted on exit however the block ends
    (also when starting it fails half-way)."""
    lock, prefix, slot = _claim_prefix(prefix)
    cluster = RabbitCluster(
        Path(tempfile.gettempdir()) / f"rabbitworker-cluster-{prefix}",
        prefix,
        size,
        port_offset=100 * slot,
    )
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(cluster.base_dir, ignore_errors=True)
            lock.close()
