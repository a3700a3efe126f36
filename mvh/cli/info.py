"""`mvh info`: describe a store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from mvh.cli._app import app, console, guarded, print_json
from mvh.cli._render import StoreOption, store_access, weights_line


@app.command("info")
@guarded
@store_access
def info_cmd(
    store: StoreOption = "embeddings.lance",
    as_json: Annotated[bool, typer.Option("--json", help="Print the description as JSON.")] = False,
) -> None:
    """Describe a store: fingerprint, counts, slides by status and table schemas."""
    from mvh.store import EmbeddingStore

    info = EmbeddingStore.open(store).info()
    if as_json:
        print_json(info.to_dict())
        return
    fp = info.fingerprint.to_dict()
    version = f"(version {info.version})"
    opened = info.opened_as  # `URI (version N)` when opened with --store-version: said once
    title = opened if opened.endswith(version) else f"{opened} {version}"
    head = Table(title=Text(f"store {title}"), show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    rows = [
        ("model", fp["model"]),
        ("model config", str(fp["model_config"])),
        ("weights", weights_line(fp["weights_sha256"]).removeprefix("weights: ")),
        ("tiles", f"{fp['tile_px']} px at {fp['mpp']} um/px, mean {fp['mean']} std {fp['std']}"),
        ("embedding", f"{fp['embedding_dtype']} x {fp['embed_dim']}"),
        ("slides", ", ".join(f"{k} {v}" for k, v in sorted(info.slides_by_status.items())) or "none"),
        ("tiles stored", str(info.n_tiles)),
        ("created", f"{info.created} by mvh {info.mvh_version}"),
        ("table versions", ", ".join(f"{k} {v}" for k, v in info.table_versions.items())),
        ("tags", ", ".join(f"{t} (slides {v['slides']})" for t, v in info.tags.items()) or "none"),
    ]
    if info.read_only:
        rows.append(("access", "read-only"))
    if info.storage_options:
        rows.append(("storage options", ", ".join(f"{k}={v}" for k, v in info.storage_options.items())))
    if info.card_fields is not None:
        fields = ", ".join(f"{k}: {v}" for k, v in info.card_fields.items()) or "no owner fields"
        rows.append(("dataset card", fields))
    if not info.writable_layout:
        rows.append(("layout", "written by an older mvh: readable; new slides go into a new store"))
    for key, value in rows:
        head.add_row(key, value)
    console.print(head)
    for name, fields in info.schema.items():
        console.print(f"[bold]{name}[/]: " + ", ".join(fields), highlight=False)
    if info.card is not None:
        from mvh.store.card import DatasetCard

        console.print(Text(DatasetCard.from_dict(info.card).to_markdown()))
