"""`mvh serve`: the web app over one or more stores, on loopback unless told otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from mvh.cli._app import app, console, guarded
from mvh.cli._render import store_access
from mvh.errors import DependencyError


@app.command("serve")
@guarded
@store_access
def serve_cmd(
    store: Annotated[list[str], typer.Option("--store", help="Store directory or URI (repeatable).")],
    results: Annotated[
        list[Path] | None,
        typer.Option("--results", help="Output folder of `mvh eval survival|st` for overlays (repeatable)."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; non-loopback needs --token.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port (0: a free one).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="MVH_SERVE_TOKEN", help="Secret every request must carry."),
    ] = None,
    insecure_no_token: Annotated[
        bool, typer.Option("--insecure-no-token", help="Allow a non-loopback --host without a token.")
    ] = False,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Upload size cap.")] = 20.0,
) -> None:
    """Serve a search page, a slide viewer and a JSON API over stores (read-only); prints its URL."""
    try:
        import uvicorn

        from mvh.serve import ServeConfig, create_app, listening_socket
    except ImportError as exc:
        raise DependencyError(f"mvh serve needs the serve extra ({exc}): pip install 'mvh[serve]'") from exc
    config = ServeConfig(
        stores=store, results=list(results or []), host=host, port=port, token=token,
        insecure_no_token=insecure_no_token, max_upload_mb=max_upload_mb,
    )
    web = create_app(config)
    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(web.state.catalog.entries)
    console.print(Text(f"mvh serve: http://{shown}:{bound}/  (stores: {names})"), highlight=False)
    if token is not None:
        console.print(Text("every request needs the token: header Authorization: Bearer TOKEN, or /login"))
    console.file.flush()
    server = uvicorn.Server(uvicorn.Config(web, log_level="warning", access_log=False))
    server.run(sockets=[sock])
