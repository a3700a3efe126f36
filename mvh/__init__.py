"""mvh: MV_Hybrid tile embeddings for computational pathology."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mvh")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
