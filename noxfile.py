"""Developer tasks. `nox -s tests` runs the whole test suite against the local RabbitMQ."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PLUGINS = ["plugins/notifications", "plugins/reports", "plugins/analytics"]
PYTHON = "3.11"


def install_everything(session: nox.Session) -> None:
    session.install("-e", ".[test]", *(f"-e{path}[test]" for path in PLUGINS))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the host's and the bundled plugins' tests (needs RabbitMQ on localhost:5672).

    Includes the cluster suite, which starts its own three RabbitMQ nodes beside the local
    broker (about half a minute, once). Extra arguments go to pytest:
    `nox -s tests -- -k prefetch -x`, `nox -s tests -- -m "not cluster"` to leave it out.
    """
    install_everything(session)
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Check style and common bugs with ruff (`nox -s lint -- --fix` to fix what it can)."""
    session.install("ruff")
    session.run("ruff", "check", ".", *session.posargs)
    session.run("ruff", "format", "--check", "--diff", "host", "plugins", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """Type-check the host and the bundled plugins with mypy (strict)."""
    install_everything(session)
    session.install("mypy", "types-jsonschema", "types-PyYAML")
    session.run("mypy", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmark the host against raw aio-pika and FastStream (needs RabbitMQ + management API).

    Not part of the test suite. `nox -s bench -- --quick` finishes in about two minutes;
    without it, about fifteen. The host is installed with its uvloop extra (the prefetch-100
    block has a row on asyncio's loop beside it); the bundled plugins are installed when
    present, for the start-up row. Arguments go to bench/run.py: `nox -s bench -- --help`.
    """
    from pathlib import Path

    plugins = [f"./{path}" for path in PLUGINS if Path(path, "pyproject.toml").exists()]
    session.install("-e", ".[uvloop]", "./bench/plugin", *plugins, "faststream[rabbit]", "psutil")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python=PYTHON)
def cluster(session: nox.Session) -> None:
    """Run only the cluster suite, against a real three-node RabbitMQ cluster.

    The suite starts rw1@localhost..rw3@localhost from the installed RabbitMQ beside the
    machine's own broker (never touching it), with ports 5681-5683 or the next free ones,
    and stops them at the end: about half a minute to start, a minute and a half in all.
    Needs `rabbitmq-server` and `rabbitmqctl` on PATH. Extra arguments go to pytest:
    `nox -s cluster -- -k tls -x`.
    """
    install_everything(session)
    session.run("pytest", "-m", "cluster", *session.posargs)


@nox.session(python=PYTHON)
def faults(session: nox.Session) -> None:
    """Run the fault-injection suite (kills hosts, restarts the broker, fuzzes bad input).

    Every test counts where each message ended up. Needs the local RabbitMQ and the right to
    run `rabbitmqctl stop_app`/`start_app` on it: it stops the broker for everyone for a few
    seconds. About two minutes. Extra arguments go to pytest: `nox -s faults -- -k sigkill -x`.
    """
    install_everything(session)
    session.run("pytest", "-m", "faults", *session.posargs)
