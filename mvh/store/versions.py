"""Store snapshots: a store's tables at one moment, named by a tag or by the slides-table version.

A store is three Lance tables (tiles, slides, meta) that move together. `mvh tag create NAME` tags each
table at its current version under one name, so `--store URI@NAME` reopens exactly that state while the
store keeps growing. `--store-version N` names the slides-table version N (what `mvh info` and results
record as the store version); the other tables are opened at their last version committed no later than
it, which holds every tile of every slide done at N (tiles are committed before their slide row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mvh.errors import UsageError

SLIDES_TABLE = "slides"


def table_versions(tables: Mapping[str, Any]) -> dict[str, int]:
    """Current version of each table."""
    return {name: int(table.version) for name, table in tables.items()}


def list_tags(tables: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Tags of the store: name -> {table: version}; only tags present on every table count."""
    per_table = {name: table.tags.list() for name, table in tables.items()}
    common = set.intersection(*(set(tags) for tags in per_table.values())) if per_table else set()
    return {
        tag: {name: int(per_table[name][tag]["version"]) for name in tables} for tag in sorted(common)
    }


def create_tag(tables: Mapping[str, Any], name: str, where: str) -> dict[str, int]:
    """Tag every table at its current version as `name` (UsageError if the tag exists).

    Lance tags one table at a time: a creation killed midway leaves the tag on some tables only, which
    `list_tags` does not show. Creating the tag again removes those parts first, then tags every table.
    """
    holders = [t for t in tables.values() if name in t.tags.list()]
    if len(holders) == len(tables):
        raise UsageError(f"tag {name!r} already exists in {where}: choose another name (see `mvh tag list`)")
    for table in holders:
        table.tags.delete(name)
    versions = table_versions(tables)
    for table_name, table in tables.items():
        table.tags.create(name, versions[table_name])
    return versions


def delete_tag(tables: Mapping[str, Any], name: str, where: str) -> None:
    """Remove tag `name` from every table (UsageError if no table has it)."""
    holders = [t for t in tables.values() if name in t.tags.list()]
    if not holders:
        raise UsageError(f"no tag {name!r} in {where}: list tags with `mvh tag list --store {where}`")
    for table in holders:
        table.tags.delete(name)


def snapshot_versions(tables: Mapping[str, Any], *, tag: str | None, version: int | None,
                      where: str) -> dict[str, int]:
    """Version of each table that makes up the snapshot named by `tag` or slides-table `version`."""
    if tag is not None:
        tags = list_tags(tables)
        if tag not in tags:
            known = ", ".join(tags) or "none"
            raise UsageError(f"{where} has no tag {tag!r} (tags: {known}); create one with `mvh tag create`")
        return tags[tag]
    if version is None:
        return table_versions(tables)
    history = {name: table.list_versions() for name, table in tables.items()}
    slides_versions = {int(v["version"]): v["timestamp"] for v in history[SLIDES_TABLE]}
    # The slides table's first versions predate the meta table (written last on creation): not a store yet
    born = max(min(v["timestamp"] for v in versions) for versions in history.values())
    usable = sorted(v for v, moment in slides_versions.items() if moment >= born)
    if version not in usable:
        known = f"versions {usable[0]}..{usable[-1]}" if usable else "none yet: no slide was committed"
        raise UsageError(f"{where} has no version {version} to open ({known}; see `mvh info`)")
    moment = slides_versions[version]
    chosen = {SLIDES_TABLE: version}
    for name, versions in history.items():
        if name != SLIDES_TABLE:
            chosen[name] = max(int(v["version"]) for v in versions if v["timestamp"] <= moment)
    return chosen
