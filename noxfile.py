"""Developer sessions: ``nox -s tests`` (the CI command), ``nox -s lint``."""

import nox

nox.options.sessions = ["tests", "lint"]


@nox.session
def tests(session: nox.Session) -> None:
    """Install advinf with its dev extras and run the test suite (extra args go to pytest).

    The tests run in one worker process per core (pytest-xdist, at most four): most of them start advinf in
    subprocesses or wait on one, and one process alone leaves half of a 2-core machine idle (5 min against 10-12).
    """
    session.install("-e", ".[dev]")
    session.run("pytest", *(session.posargs or ["-q", "-n", "auto", "--maxprocesses=4"]),
                env={"ADVINF_STRICT_PLUGINS": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def demo(session: nox.Session) -> None:
    """Train the toy ALI recipe (the README's first command) in a fresh environment."""
    session.install("-e", ".")
    session.run("advinf", "run", "recipes/ali_mixture25.toml", *session.posargs)
