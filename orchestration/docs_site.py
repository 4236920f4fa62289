"""The city's documentation sites, served over http on loopback: dbt docs, GX Data Docs and the report.

`citylake docs` builds the dbt docs (`dbt docs generate` against the city's warehouse: manifest.json,
catalog.json and dbt's index.html under `<state_dir>/docs/dbt/`) and serves, from one server on
127.0.0.1 (port: `--port`, else $CITYLAKE_DOCS_PORT, else 3080):

    /                          an index of everything below
    /dbt/                      the dbt docs site (models, columns, lineage)
    /data-docs/                the GX Data Docs: an index of every validation page, newest first
    /data-docs/<asset>/<run>.html   one validation of one asset (what a Dagster asset check links;
                               a passing validation's page is rendered by GX on its first request)
    /report/indicator_report.html   the indicator report published beside the catalog

`citylake dev` starts the same server beside the Dagster UI, and the UI links the report and each
check's Data Docs page as http URLs on it (`docs_url`), which a browser opened from the UI follows
(file:// links it does not).

GX renders its Data Docs pages with Bootstrap, jQuery and icons from public CDNs; offline they are
unstyled and their scripts fail. `offline_data_docs` rewrites a page at write time: the remote styles
and scripts are removed, a small stylesheet with the Bootstrap classes GX's pages use is inlined
(beside GX's own styles, which the page already inlines), and the broken links (Home, the logo, the
suite page) point to the Data Docs index.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from orchestration.config import CityConfig

PORT_ENV = "CITYLAKE_DOCS_PORT"
DEFAULT_PORT = 3080
HOST = "127.0.0.1"


def docs_port() -> int:
    return int(os.environ.get(PORT_ENV) or DEFAULT_PORT)


def docs_url(path: str) -> str:
    """The http URL of `path` (e.g. "report/indicator_report.html") on the docs server."""
    return f"http://{HOST}:{docs_port()}/{path.lstrip('/')}"


def site_dir(cfg: CityConfig) -> Path:
    return cfg.state_dir / "docs"


def data_docs_dir(cfg: CityConfig) -> Path:
    """Where the quality gates write their Data Docs pages: <asset key dotted>/<run id>.html."""
    return cfg.state_dir / "quality" / "data_docs"


# --- GX Data Docs, offline ----------------------------------------------------------------------------

#: the Bootstrap 4 classes GX's validation pages use, in the few rules a readable page needs
OFFLINE_CSS = """
*, ::after, ::before { box-sizing: border-box; }
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 15px;
  line-height: 1.5; color: #212529; background: #fff; }
a { color: #0b5cad; text-decoration: none; } a:hover { text-decoration: underline; }
h1, h2, h3, h4, h5, h6, .h6 { margin: 0 0 .5rem; font-weight: 600; line-height: 1.2; }
h4 { font-size: 1.35rem; } h5 { font-size: 1.15rem; } h6, .h6 { font-size: 1rem; }
p { margin: 0 0 1rem; } .lead { font-size: 1.1rem; color: #495057; }
.navbar { display: flex; align-items: center; padding: .5rem 1rem; background: #f3f6f9; }
.border-bottom { border-bottom: 1px solid #dee2e6; }
.sticky-top { position: sticky; top: 0; z-index: 2; }
.navbar-brand { font-weight: 700; font-size: 1.2rem; margin-right: 1rem; }
.breadcrumb { display: flex; flex-wrap: wrap; list-style: none; padding: .4rem .8rem; margin: 0;
  border-radius: .25rem; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding: 0 .5rem; color: #6c757d; }
.breadcrumb-item.active { color: #495057; }
.container-fluid { width: 100%; padding: 1rem 2rem; }
.row { display: flex; flex-wrap: wrap; margin: 0 -12px; }
[class*="col-"] { position: relative; width: 100%; padding: 0 12px; }
@media (min-width: 768px) {
  .col-md-2 { flex: 0 0 16.66%; max-width: 16.66%; } .col-md-10 { flex: 0 0 83.33%; max-width: 83.33%; }
  .col-md-6 { flex: 0 0 50%; max-width: 50%; } .col-md-4 { flex: 0 0 33.33%; max-width: 33.33%; }
  .col-md-8 { flex: 0 0 66.66%; max-width: 66.66%; } .col-md-12 { flex: 0 0 100%; max-width: 100%; }
  .d-md-inline-flex { display: inline-flex !important; }
}
.col-12 { flex: 0 0 100%; max-width: 100%; }
.card { display: flex; flex-direction: column; border: 1px solid #dfe3e8; border-radius: .35rem;
  margin-bottom: 1rem; background: #fff; }
.card-header { padding: .6rem 1rem; background: #f3f6f9; border-bottom: 1px solid #dfe3e8; }
.card-body { padding: 1rem; }
.table { width: 100%; border-collapse: collapse; margin-bottom: 1rem; }
.table th, .table td { padding: .45rem .6rem; border-top: 1px solid #dee2e6; vertical-align: top; text-align: left; }
.table thead th { border-bottom: 2px solid #dee2e6; background: #f8f9fa; }
.table-sm th, .table-sm td { padding: .3rem .45rem; }
.table-bordered, .table-bordered th, .table-bordered td { border: 1px solid #dee2e6; }
.table-responsive { display: block; width: 100%; overflow-x: auto; }
.alert { padding: .6rem 1rem; margin-bottom: 1rem; border: 1px solid transparent; border-radius: .25rem; }
.alert-secondary { color: #383d41; background: #e2e3e5; border-color: #d6d8db; }
.bg-light { background: #f3f6f9 !important; }
.text-danger { color: #b02a37 !important; } .text-success { color: #146c43 !important; }
.btn { display: inline-block; padding: .3rem .7rem; border: 1px solid transparent; border-radius: .25rem;
  cursor: pointer; font: inherit; }
.btn-primary { color: #fff; background: #0b5cad; }
.nav-link { display: block; padding: .25rem 0; }
.nav, .list-group { list-style: none; padding-left: 0; }
.rounded { border-radius: .25rem; } .float-left { float: left; }
.d-none { display: none !important; } .d-flex { display: flex !important; } .d-sm-block { display: block; }
.align-items-center { align-items: center; } .mr-auto { margin-right: auto; }
.m-0 { margin: 0 !important; } .mt-0 { margin-top: 0 !important; } .mb-0 { margin-bottom: 0 !important; }
.mt-1 { margin-top: .25rem; } .mb-1 { margin-bottom: .25rem; } .ml-1 { margin-left: .25rem; }
.ml-2 { margin-left: .5rem; } .mr-2 { margin-right: .5rem; } .mb-4 { margin-bottom: 1.5rem; }
.p-0 { padding: 0 !important; } .p-1 { padding: .25rem; } .p-2 { padding: .5rem; } .p-3 { padding: 1rem; }
.px-0 { padding-left: 0 !important; padding-right: 0 !important; } .pt-0 { padding-top: 0; }
.pb-0 { padding-bottom: 0; } .pb-1 { padding-bottom: .25rem; } .pr-3 { padding-right: 1rem; }
.fas, .fa-times { font-style: normal; }
.citylake-brand { font-weight: 700; color: #212529; }
"""

_REMOTE = re.compile(
    r"""<link\b[^>]*href=["']https?://[^"']*["'][^>]*>|<script\b[^>]*src=["']https?://[^"']*["'][^>]*>\s*</script>""",
    re.IGNORECASE,
)
_SCRIPT = re.compile(r"<script>(?:(?!</script>).)*?</script>", re.IGNORECASE | re.DOTALL)
_FAVICON = re.compile(r"""<link\b[^>]*rel=["']shortcut icon["'][^>]*>""", re.IGNORECASE)
_LOGO = re.compile(r"<img\b[^>]*great-expectations-web-assets[^>]*/?>", re.IGNORECASE | re.DOTALL)
_INJECTED = re.compile(r'(?:<link rel="icon" href="data:,">)?<style id="citylake-offline">.*?</style>\n?', re.DOTALL)
_LOCAL_LINK = re.compile(r"""href=["'](?:\.\./)+(?:index\.html|expectations/[^"']*)["']""")


def offline_data_docs(page: str, home: str) -> str:
    """A GX Data Docs page readable with no network: see the module docstring. `home` is the relative
    URL of the Data Docs index from the page. Idempotent."""
    page = _INJECTED.sub("", page)  # a page rewritten before gets the current stylesheet
    page = _REMOTE.sub("", page)
    page = _FAVICON.sub("", page)
    # the inline scripts call jQuery ($), which is gone: the walkthrough modal and the show/hide buttons
    page = _SCRIPT.sub("", page)
    page = _LOGO.sub('<span class="citylake-brand">Data Docs</span>', page)
    page = _LOCAL_LINK.sub(f'href="{home}"', page)
    # no favicon to fetch (a browser asks for /favicon.ico otherwise, which nothing serves)
    style = f'<link rel="icon" href="data:,"><style id="citylake-offline">{OFFLINE_CSS}</style>'
    return page.replace("</head>", style + "\n</head>", 1) if "</head>" in page else style + page


def data_docs_pages(folder: Path) -> list[tuple[str, Path]]:
    """(asset key, page) for every validation, newest first: its page, or, for a passing validation not
    read yet, the page it renders into when asked for (quality.data_docs)."""
    if not folder.is_dir():
        return []
    found = {p: p.stat().st_mtime for p in folder.glob("*/*.html")}
    found.update({p.with_suffix(".html"): p.stat().st_mtime for p in folder.glob("*/*.json")})
    pages = [(p.parent.name.replace(".", "/"), p) for p in sorted(found, key=found.__getitem__, reverse=True)]
    return pages


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<link rel="icon" href="data:,"><style id="citylake-offline">{OFFLINE_CSS}</style></head><body>'
        f'<nav class="navbar border-bottom"><a class="navbar-brand" href="/">citylake docs</a></nav>'
        f'<div class="container-fluid"><h4>{html.escape(title)}</h4>{body}</div></body></html>'
    )


def data_docs_index(folder: Path) -> str:
    """The Data Docs index: every validation page by asset, newest first, links relative to `folder`."""
    rows = []
    for key, page in data_docs_pages(folder):
        stamp = (page if page.exists() else page.with_suffix(".json")).stat().st_mtime
        when = dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        href = f"{page.parent.name}/{page.name}"
        rows.append(
            f"<tr><td>{html.escape(key)}</td><td>{when}</td>"
            f'<td><a href="{html.escape(href)}">{html.escape(page.stem)}</a></td></tr>'
        )
    body = (
        '<table class="table table-sm"><thead><tr><th>asset</th><th>validated</th><th>run</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else "<p>No validation yet: run the pipeline (`citylake run`).</p>"
    )
    return _page("GX Data Docs: every validation", body)


def site_index(cfg: CityConfig) -> str:
    from orchestration.publish import REPORT_NAME

    dbt_built = (site_dir(cfg) / "dbt" / "index.html").exists()
    report = cfg.catalog_path.with_name(REPORT_NAME).exists()
    items = [
        '<li><a href="dbt/index.html">dbt docs</a>: every model, its columns and the lineage</li>'
        if dbt_built
        else "<li>dbt docs: not built yet (run <code>citylake docs --no-serve</code>)</li>",
        f'<li><a href="data-docs/">GX Data Docs</a>: {len(data_docs_pages(data_docs_dir(cfg)))} validation pages</li>',
        f'<li><a href="report/{REPORT_NAME}">Indicator report</a></li>'
        if report
        else "<li>Indicator report: not published yet (run <code>citylake run</code>)</li>",
    ]
    return _page(f"{cfg.name}: documentation", "<ul>" + "".join(items) + "</ul>")


# --- building -----------------------------------------------------------------------------------------


def build_dbt_docs(cfg: CityConfig) -> Path:
    """`dbt docs generate` over the city's project and warehouse into <state_dir>/docs/dbt (its own target
    path: the manifest Dagster loads stays as it is); returns the folder."""
    from orchestration.dbt_build import bronze_views, build_project, dbt_env

    project = build_project(cfg)
    target = site_dir(cfg) / "dbt"
    bronze_views(cfg)
    dbt_env()
    from dbt.cli.main import dbtRunner

    args = ["docs", "generate", "--quiet", "--project-dir", str(project), "--profiles-dir", str(project)]
    res = dbtRunner().invoke([*args, "--target-path", str(target)])
    if not res.success:
        raise RuntimeError(
            f"dbt docs generate failed for {project}: {res.exception or 'see the dbt log in ' + str(project / 'logs')}"
            " (a pipeline run holding the warehouse open makes it fail: try again when the run is done)"
        )
    return target


def build(cfg: CityConfig) -> Path:
    """The dbt docs, the Data Docs made readable offline, and the indexes; returns the site folder."""
    build_dbt_docs(cfg)
    from orchestration.quality import render_data_docs

    folder = data_docs_dir(cfg)
    for _, page in data_docs_pages(folder):
        render_data_docs(page)
        text = page.read_text(encoding="utf-8")
        fixed = offline_data_docs(text, "../index.html")
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")
    if folder.is_dir():
        (folder / "index.html").write_text(data_docs_index(folder), encoding="utf-8")
    (site_dir(cfg) / "index.html").write_text(site_index(cfg), encoding="utf-8")
    return site_dir(cfg)


# --- serving ------------------------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    """Files under the site's folders by URL prefix; the indexes are rendered on each request."""

    def __init__(self, *args, cfg: CityConfig, quiet: bool, **kwargs) -> None:
        self.cfg = cfg
        self.quiet = quiet
        super().__init__(*args, directory=str(site_dir(cfg)), **kwargs)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._html(site_index(self.cfg))
        if path in ("/data-docs", "/data-docs/", "/data-docs/index.html"):
            if path == "/data-docs":
                self.send_response(301)
                self.send_header("Location", "/data-docs/")
                self.end_headers()
                return None
            return self._html(data_docs_index(data_docs_dir(self.cfg)))
        if path.startswith("/data-docs/") and path.endswith(".html"):
            from orchestration.quality import render_data_docs

            # a passing validation's page is rendered when first asked for (quality.data_docs)
            render_data_docs(Path(self.translate_path(path)))
        return super().do_GET()

    def _html(self, text: str) -> None:
        data = text.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def translate_path(self, path: str) -> str:
        from orchestration.publish import REPORT_NAME

        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean == f"/report/{REPORT_NAME}":
            return str(self.cfg.catalog_path.with_name(REPORT_NAME))
        if clean.startswith("/data-docs/"):
            rel = super().translate_path("/" + clean.removeprefix("/data-docs/"))
            return str(data_docs_dir(self.cfg) / Path(rel).relative_to(Path(self.directory)))
        if clean.startswith("/dbt/"):
            return super().translate_path(clean)
        return str(Path(self.directory) / "__not_served__")

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def server(cfg: CityConfig, port: int | None = None, quiet: bool = False) -> ThreadingHTTPServer:
    """The docs server on 127.0.0.1:`port` (not started: call serve_forever)."""
    site_dir(cfg).mkdir(parents=True, exist_ok=True)
    return ThreadingHTTPServer((HOST, docs_port() if port is None else port), partial(_Handler, cfg=cfg, quiet=quiet))


def serve_in_background(cfg: CityConfig, port: int | None = None) -> ThreadingHTTPServer:
    """Start the docs server in a daemon thread (what `citylake dev` does); returns it (shutdown() stops it)."""
    httpd = server(cfg, port, quiet=True)
    threading.Thread(target=httpd.serve_forever, name="citylake-docs", daemon=True).start()
    return httpd
