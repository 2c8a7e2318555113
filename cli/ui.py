"""`rstar ui`: serve the viewer (web/) on the results database."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from cli.render import make_console, print_error
from db import migrate
from workers.settings import get_settings


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def viewer_hosts(host: str, extra: list[str]) -> list[str] | None:
    """The Host names the viewer answers to: the address it is bound to, the loopback names when
    that is loopback, and the names the user adds (a name resolved by another site to 127.0.0.1,
    DNS rebinding, is none of them). None (any) when bound to every address: a token guards it."""
    if host in ("0.0.0.0", "::", "") and not extra:
        return None
    names = [host, f"[{host}]"] if ":" in host else [host]
    if _loopback(host):
        names += ["127.0.0.1", "localhost", "::1", "[::1]"]
    return list(dict.fromkeys([*names, *extra]))


def ui_command(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8600,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs --token.")
    ] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            help="Require this token: as the password of HTTP basic auth (any user name) or as "
            "'Authorization: Bearer TOKEN' [env RSTAR_UI_TOKEN].",
            show_default=False,
        ),
    ] = None,
    allow_control: Annotated[
        bool, typer.Option(help="Show cancel and resume buttons (they write to the database and the broker).")
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another name the viewer may be reached by (repeatable): it answers only requests"
            " naming the address it is bound to (and localhost on loopback) or one of these.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """A read-only web view of jobs, problems, model calls and search trees."""
    import uvicorn

    from web.app import create_app

    err = make_console(stderr=True)
    token = token or os.environ.get("RSTAR_UI_TOKEN") or None
    if not _loopback(host) and token is None:
        print_error(
            err,
            f"--host {host} is reachable from other machines: give --token (or RSTAR_UI_TOKEN), or bind"
            " 127.0.0.1",
        )
        raise typer.Exit(2)
    url = get_settings().database_url
    try:
        migrate.ensure_current(url)
    except migrate.SchemaOutOfDateError as exc:
        print_error(err, exc)
        raise typer.Exit(2) from None
    shown = f"[{host}]" if ":" in host else host
    auth = "token required" if token else "no token"
    mode = "cancel and resume allowed" if allow_control else "read-only"
    err.print(
        f"rstar ui on http://{shown}:{port}/ ({mode}, {auth}) for {migrate.redact_url(url)}", highlight=False
    )
    hosts = viewer_hosts(host, allowed_host or [])
    uvicorn.run(
        create_app(database_url=url, allow_control=allow_control, token=token, allowed_hosts=hosts),
        host=host,
        port=port,
        log_level="info",
    )
