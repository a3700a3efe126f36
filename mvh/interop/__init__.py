"""Exchange embeddings with TRIDENT, CLAM and Patho-Bench (per-slide h5 files) and Parquet users.

Import: `interop_import` (ImportConfig -> run_import -> ImportResult). Export: `interop_export`
(ExportConfig -> run_export -> ExportResult). The peers' h5 conventions: `trident`. QuPath GeoJSON of
tiles and search hits (level-0 px): `geojson`.
"""

from mvh.interop.exporter import (
    FORMATS,
    ExportConfig,
    ExportResult,
    export_h5,
    export_parquet,
    run_export,
)
from mvh.interop.importer import (
    ATTRS,
    FailedFile,
    ImportConfig,
    ImportedFile,
    ImportResult,
    import_h5,
    run_import,
)
from mvh.interop.provenance import EXTERNAL_WEIGHTS

__all__ = [
    "ATTRS",
    "EXTERNAL_WEIGHTS",
    "FORMATS",
    "ExportConfig",
    "ExportResult",
    "FailedFile",
    "ImportConfig",
    "ImportResult",
    "ImportedFile",
    "export_h5",
    "export_parquet",
    "import_h5",
    "run_export",
    "run_import",
]
