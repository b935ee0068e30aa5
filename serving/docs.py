"""/docs (Swagger UI) and /redoc (ReDoc), with their JavaScript, CSS and favicon served by
this app under /static/docs from the pinned fastapi-offline package (Swagger UI 5, ReDoc 2).

FastAPI's default pages load those files from a CDN, so on an offline network (a hospital's,
often) they are blank. This is FastAPI's "self-hosting JavaScript and CSS for docs" recipe:
the app is built with docs_url=None and redoc_url=None and these routes replace them.
The API key rule is the middleware's, unchanged: with a key set, the pages and their files
need it like every route but the health checks.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/static/docs"
ASSET_PACKAGE = "fastapi_offline"  # setup.cfg's serve extra pins it
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)


def assets_dir() -> Path:
    """The package's folder of the files above; raises RuntimeError naming what is missing."""
    try:
        folder = Path(str(files(ASSET_PACKAGE).joinpath("static")))
    except ModuleNotFoundError:
        raise RuntimeError(f"{ASSET_PACKAGE} is not installed: /docs and /redoc serve their files from "
                           "it (pip install -e '.[serve]')") from None
    missing = [name for name in ASSETS if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{ASSET_PACKAGE} at {folder} lacks {', '.join(missing)}: install the version "
                           "setup.cfg pins")
    return folder


def add_docs(app: FastAPI) -> None:
    """Mount the files (GET and HEAD only; Starlette's StaticFiles refuses paths that resolve
    outside the folder, symlinks included) and add /docs and /redoc pointing at them."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return f"{root}{app.openapi_url}", f"{root}{ASSETS_URL}"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi, title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/{SWAGGER_JS}", swagger_css_url=f"{assets}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{assets}/{FAVICON}", swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        # with_google_fonts=False: the fonts would come from Google's servers
        return get_redoc_html(openapi_url=openapi, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{assets}/{REDOC_JS}", redoc_favicon_url=f"{assets}/{FAVICON}",
                              with_google_fonts=False)
