from __future__ import annotations

import sys
from pathlib import Path

import pytest

from data.root import resolve_data_root

#: The installed command (``[project.scripts]``; ``make install`` puts it beside the interpreter).
GENREFUSION = str(Path(sys.executable).parent / "genrefusion")

#: Fixtures that train a whole run (the main job, a k-fold run, a paired run, a segment run): every
#: test that uses one is marked ``slow``, so ``-m "not slow"`` is a quick loop without them.
WHOLE_RUN_FIXTURES = frozenset({"main_job_run", "kfold_run", "paired_run", "trained_run", "selected_runs"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if WHOLE_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real shared datasets; a missing root fails loudly (CI has ../shared beside the clone)."""
    return resolve_data_root()


@pytest.fixture(scope="session")
def covers_loaded(data_root):
    from data.covers import load_covers_table

    return load_covers_table(data_root / "covers" / "covers.csv")


@pytest.fixture(scope="session")
def discogs_covers_csv(covers_loaded):
    """``write(path, per_genre)``: the first ``per_genre`` Discogs covers of rap (hiphop), country and pop as a
    table in the ``covers.csv`` schema, at ``path`` (returned)."""
    import pandas as pd

    def write(path: Path, per_genre: int) -> Path:
        items = covers_loaded.items
        picked = pd.concat([items[(items["source"] == "discogs") & (items["label"] == genre)].head(per_genre)
                            for genre in ("hiphop", "country", "pop")])
        pd.DataFrame({"path": picked["cover_path"], "source": "discogs", "genre": picked["label"],
                      "md5": picked["md5"]}).to_csv(path, index=False)
        return path

    return write


@pytest.fixture(scope="session")
def gtzan30(data_root):
    from data.gtzan import load_gtzan_features

    return load_gtzan_features(data_root / "gtzan" / "features_30_sec.csv")


@pytest.fixture(scope="session")
def main_job_run(tmp_path_factory, discogs_covers_csv) -> tuple[str, Path]:
    """The default main job (audio + covers + fusion) on a 150-cover subset of the Discogs covers, run by the
    installed ``genrefusion run`` (tracked in MLflow, the default): (stdout, run folder)."""
    import subprocess

    tmp_path = tmp_path_factory.mktemp("main_job")
    csv = discogs_covers_csv(tmp_path / "covers_subset.csv", 50)
    result = subprocess.run([GENREFUSION, "run", f"paths.root_dir={tmp_path}",
                             "trainer.progress=false", f"covers.data.loader.csv_path={csv}", "covers.data.name=subset",
                             "audio.trainer.max_epochs=30"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_line = next(line for line in result.stdout.splitlines() if line.startswith("Run folder: "))
    return result.stdout, Path(run_line.split("Run folder: ")[1])


class LoopbackServer:
    """An HTTP server on 127.0.0.1 serving ``files`` (path → bytes) and counting requests per path.

    ``handlers`` maps a path to a function ``(query) -> (status, body)`` for answers computed per
    request (an API's search endpoint). Anything else is a 404.
    """

    def __init__(self, files: dict[str, bytes] | None = None, handlers: dict | None = None) -> None:
        import threading
        from collections import Counter
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlparse

        self.files, self.handlers, self.requests = dict(files or {}), dict(handlers or {}), Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                server.requests[url.path] += 1
                if url.path in server.handlers:
                    status, body = server.handlers[url.path](parse_qs(url.query))
                elif url.path in server.files:
                    status, body = 200, server.files[url.path]
                else:
                    status, body = 404, b"not found"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True  # a handler still sleeping does not hold up close()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def loopback():
    """``loopback(files, handlers)`` starts a :class:`LoopbackServer`; every one is closed after the test."""
    servers = []

    def start(files: dict[str, bytes] | None = None, handlers: dict | None = None) -> LoopbackServer:
        servers.append(LoopbackServer(files, handlers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def closed_port() -> int:
    """A local port nothing listens on (a refused connection)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache folder for the whole session: features and embeddings of the same files are computed once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cover_server(tmp_path_factory, covers_loaded):
    """Serves one real cover over HTTP on 127.0.0.1 (a ``cover_url`` input)."""
    served = tmp_path_factory.mktemp("served")
    source = covers_loaded.items[covers_loaded.items["label"] == "country"]["cover_path"].iloc[60]
    (served / "cover.jpg").write_bytes(Path(source).read_bytes())
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:  # a line per request would bury the test output
            pass

    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


PER_GENRE = 14


@pytest.fixture(scope="session")
def small_data_root(tmp_path_factory, covers_loaded, data_root) -> Path:
    """A data root whose covers/covers.csv lists the first Discogs covers of rap, country and pop by relative
    path (links to the shared files), with a copy of one cover, one cover filed under two genres, and a
    corrupt file."""
    import pandas as pd

    root = tmp_path_factory.mktemp("data_root")
    items = covers_loaded.items
    picked = pd.concat([items[(items["source"] == "discogs") & (items["label"] == genre)].head(PER_GENRE)
                        for genre in ("hiphop", "country", "pop")])
    rows = []
    for item in picked.itertuples():
        relative = Path(item.cover_path).relative_to(data_root)
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(item.cover_path)
        rows.append({"path": str(relative), "source": "discogs", "genre": item.label, "md5": item.md5})
    first, second = rows[0], rows[PER_GENRE]
    for name, genre, source in (("copy", first["genre"], first), ("two-genres", "pop", second)):
        relative = Path(source["path"]).with_name(f"{name}.jpg")
        (root / relative).symlink_to(root / source["path"])
        rows.append({**source, "path": str(relative), "genre": genre})
    corrupt = Path("covers/discogs/pop/corrupt.jpg")
    (root / corrupt).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows.append({"path": str(corrupt), "source": "discogs", "genre": "pop", "md5": "0" * 32})
    pd.DataFrame(rows).to_csv(root / "covers" / "covers.csv", index=False)
    return root


@pytest.fixture(scope="session")
def pack(small_data_root, tmp_path_factory) -> tuple[Path, list[str]]:
    """A cover pack of the paper3 cells of ``small_data_root`` at 224 px (Lite0's input size), and the overrides
    that made it."""
    from covers.pack import build_cover_pack
    from covers.reproduce import cell_overrides

    work = tmp_path_factory.mktemp("pack_work")
    extra = [f"paths.data_root={small_data_root}", f"paths.root_dir={work}"]
    cells = [(f"paper3-{p}", cell_overrides("paper3", p, extra)) for p in ("group", "random")]
    build_cover_pack(work / "pack", cells, size=224)
    return work / "pack", extra
