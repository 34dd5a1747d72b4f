"""How results and failures reach the user: the shared `--format` option, result output, exit codes."""

from __future__ import annotations

import enum
import errno
import json
import sys
import traceback
from typing import Any, Callable, NoReturn, Optional

import click
import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from semiofed.common.errors import SemiofedError

EXIT_FAILED = 1  # a domain error (one line says the fix), or a check the command ran did not pass
EXIT_USAGE = 2  # Click's: an unknown option or a bad option value (e.g. --format yaml)
EXIT_OS_ERROR = 3  # the operating system refused a file or path (missing folder, permissions, full disk)
EXIT_INTERNAL = 4  # a bug in semiofed: rerun with --verbose for the traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

EXIT_CODES_HELP = (
    f"Exit status: 0 success; {EXIT_FAILED} a domain error or a failed check (the message says the fix); "
    f"{EXIT_USAGE} a usage error (bad option or value); {EXIT_OS_ERROR} a file or OS error (the message names the path); "
    f"{EXIT_INTERNAL} an internal error (rerun with --verbose for the traceback); {EXIT_INTERRUPTED} interrupted. "
    "An error is one line on stderr; with --format json it is also one object on stdout: "
    '{"error": ..., "fix": ..., "exit_code": N}.'
)

_FORMAT_KEY = "semiofed.output_format"


class OutputFormat(str, enum.Enum):
    """What a command prints on stdout: a table (or lines) for people, or one JSON document for scripts."""

    table = "table"
    json = "json"

    def __str__(self) -> str:
        # Typer converts an option callback's return value again through str(): it must give the plain value
        return self.value


def _remember_format(ctx: click.Context, value: OutputFormat) -> OutputFormat:
    # ctx.meta is shared by every context of one invocation: the root group's error handler reads it back
    ctx.meta[_FORMAT_KEY] = value
    return value


def format_option(help_text: str = "table, or json (one JSON document on stdout; errors too).") -> Any:
    """The `--format` option every printing command declares, so that errors follow the same format."""
    return typer.Option(OutputFormat.table, "--format", help=help_text, callback=_remember_format)


def emit(output_format: OutputFormat, data: Any, print_table: Callable[[], None], *, sort_keys: bool = False) -> None:
    """Print `data` as one JSON document on stdout in JSON mode; otherwise call `print_table` to print it for people."""
    if OutputFormat(output_format) is OutputFormat.json:
        print(json.dumps(data, indent=2, sort_keys=sort_keys), flush=True)
    else:
        print_table()


_OS_FIXES = {
    errno.ENOENT: "check the path: its folder must exist (or be creatable), or give another path",
    errno.EACCES: "give a path you are allowed to use, or fix its permissions",
    errno.EPERM: "give a path you are allowed to use, or fix its permissions",
    errno.EROFS: "the file system is read-only: give a path on a writable disk",
    errno.ENOSPC: "free some disk space, or give a path on another disk",
    errno.EISDIR: "give the path of a file, not of a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: correct the path",
    errno.EEXIST: "remove it first, or give another path",
}


def _describe(exc: BaseException) -> tuple[str, Optional[str], int]:
    """What went wrong, the fix, and the exit status, for any exception a command lets out."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "run the command again to finish it", EXIT_INTERRUPTED
    if isinstance(exc, SemiofedError):
        return getattr(exc, "what", str(exc)), getattr(exc, "fix", None), EXIT_FAILED
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
        what = f"cannot use {paths}: {reason}" if paths else f"operating-system error: {reason}"
        return what, _OS_FIXES.get(exc.errno, "check the path, its permissions and the free disk space"), EXIT_OS_ERROR
    return (f"internal error: {type(exc).__name__}: {exc}",
            "this is a bug in semiofed: rerun with --verbose and report the traceback", EXIT_INTERNAL)


def _fail(ctx: click.Context, exc: BaseException) -> NoReturn:
    what, fix, code = _describe(exc)
    if ctx.params.get("verbose"):
        traceback.print_exception(exc, file=sys.stderr)
    if ctx.meta.get(_FORMAT_KEY) is OutputFormat.json:
        print(json.dumps({"error": what, "fix": fix, "exit_code": code}), flush=True)
    # the line goes to stderr in JSON mode too: logs and people read it there, scripts read stdout;
    # the domain errors' own wording ("what. Fix: fix") is what users and scripts already match on
    line = str(exc) if isinstance(exc, SemiofedError) else (f"{what}. Fix: {fix}" if fix else what)
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " ", line))
    raise click.exceptions.Exit(code)


class GuardedGroup(TyperGroup):
    """The root command group: whatever a command lets out becomes one line (or one JSON object) and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; translate its failure as EXIT_CODES_HELP says, with a traceback only under --verbose."""
        ctx.meta[_FORMAT_KEY] = OutputFormat.table
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # typer.Exit(code) from a command, and Click's own usage errors, keep their meaning
        except BrokenPipeError:
            raise  # `semiofed ... | head`: Typer quietens the closed pipe itself
        except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - this is the one place every failure is reported
            _fail(ctx, exc)
