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

    Extra arguments go to pytest: `nox -s tests -- -k prefetch -x`.
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
    session.install("mypy")
    session.run("mypy", *session.posargs)
