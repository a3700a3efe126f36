"""`mvh serve`: a local web app over embedding stores (search page, slide viewer, JSON API). Reads only.

`create_app(ServeConfig(...))` builds the FastAPI app; the CLI (`mvh/cli/serve.py`) runs it with uvicorn.
Nothing but the CLI imports this package.
"""

from mvh.serve.app import create_app
from mvh.serve.config import ServeConfig
from mvh.serve.listen import listening_socket

__all__ = ["ServeConfig", "create_app", "listening_socket"]
