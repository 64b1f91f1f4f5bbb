"""What the command-line entry points share: user errors as one line and exit status 2."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

from hierot.config import is_config_group
from hierot.errors import ConfigError, DataError, HierarchyError, user_message
from hierot.hydra_callbacks import sweep_failure
from hierot.logs import quiet_warnings
from hierot.stopping import Cancelled, ctrl_c_cancels

USER_ERRORS = (ConfigError, DataError, HierarchyError)

MULTIRUN_FLAGS = ("-m", "--multirun")


def error_line(error: BaseException) -> str:
    return f"hierot: error: {user_message(error)}"


def fail(error: BaseException) -> NoReturn:
    print(error_line(error), file=sys.stderr, flush=True)
    sys.exit(2)


def discard_run_dir(out: Path, name: str) -> None:
    """Remove a run directory that holds only Hydra's bookkeeping (``.hydra/`` and the
    job's log): a run that failed before writing anything leaves nothing behind."""
    if out.is_dir() and all(p.name in (".hydra", f"{name}.log") for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


@contextmanager
def one_line_errors(out: Path, name: str) -> Iterator[None]:
    """Run a single job's body: a user error is one line and exit 2, and the run directory
    it leaves holding only Hydra's bookkeeping is removed."""
    try:
        yield
    except USER_ERRORS as e:
        discard_run_dir(out, name)
        fail(e)


def hydra_flags(args: Sequence[str]) -> bool:
    """True when the command line holds one of Hydra's own flags besides ``-m`` (``--help``,
    ``--cfg job``, ``--config-dir DIR``, ...): Hydra handles those itself, and an override
    never starts with ``-``, so no list of Hydra's flags is kept here. Such a command skips
    the early check; a job it runs still checks its config before training."""
    return any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args)


def dropped_groups(args: Sequence[str]) -> list[str]:
    """``args`` with ``group=null`` written as ``~group``: Hydra removes a config group
    only with ``~`` and stops on ``group=null`` with a traceback, while ``null`` is what its
    defaults lists (and users of the template) write for "no option"."""
    named = ((a, a.removesuffix("=null")) for a in args)
    return [
        f"~{name}" if name != a and name != "hydra" and is_config_group(name) else a
        for a, name in named
    ]


def overrides_of(args: Sequence[str]) -> list[str]:
    return [a for a in args if a not in MULTIRUN_FLAGS]


def run_checked(
    precheck: Callable[[list[str]], None],
    run: Callable[[], object],
    implied: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """An entry point's ``main``: quiet known third-party noise, add the overrides the
    command line ``implied`` (read off it), check the command line with ``precheck`` (one
    line and exit 2 on a user error, before Hydra creates a run directory), then hand over
    to ``run`` (the ``hydra.main`` function). Ctrl-C where training's graceful stop is not
    in place (``hierot.stopping``) is one line and exit status 130."""
    sys.argv[1:] = dropped_groups(sys.argv[1:])
    if implied is not None and not hydra_flags(sys.argv[1:]):  # ``--help`` is no override
        sys.argv.extend(implied(overrides_of(sys.argv[1:])))
    args = sys.argv[1:]
    quiet_warnings()
    try:
        with ctrl_c_cancels():
            if not hydra_flags(args):
                try:
                    precheck(overrides_of(args))
                except USER_ERRORS as e:
                    fail(e)
            run()
    except Cancelled:
        print("hierot: interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        sys.exit(128 + signal.SIGINT)
    failure = sweep_failure()
    if failure is not None:  # jobs of the sweep failed: a script chaining sweeps must see it
        print(f"hierot: error: {failure}", file=sys.stderr, flush=True)
        sys.exit(2)
