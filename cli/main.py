"""The typer app behind the `vardist` command. It only parses options and calls the public
Python API; all checks and work live in the library."""

from __future__ import annotations

from typing import Optional

import typer

from vardist._version import __version__

app = typer.Typer(
    name="vardist",
    help="Inference-time scaling search (VAR-Scaling) for visual autoregressive image models.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vardist {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """vardist command line."""


if __name__ == "__main__":
    app()
