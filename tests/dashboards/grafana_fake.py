"""A stand-in for the few Grafana HTTP API endpoints `stocktrace dashboards push` uses, with state, so that a
second push finds what the first created. Grafana itself cannot run here; the shapes follow Grafana's HTTP API
reference (folder, data source and dashboard APIs): 404 {"message": ...} for what is missing, 412 for a folder
uid that exists, 401 without the expected bearer token.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    method: str
    path: str
    body: Any


@dataclass
class GrafanaState:
    token: str
    calls: list[Call] = field(default_factory=list)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with state.lock:
            state.calls.append(Call(self.command, self.path, body))
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self._reply(401, {"message": "Unauthorized"})
                return
            status, reply = route(state, self.command, self.path.split("?")[0], body)
        self._reply(status, reply)

    # http.server dispatches on do_<METHOD>.
    do_GET = do_POST = do_PUT = _handle  # noqa: N815 - the names BaseHTTPRequestHandler looks up


def route(state: GrafanaState, method: str, path: str, body: Any) -> tuple[int, Any]:  # noqa: C901 - one branch
    # per endpoint, as a router table would have
    parts = path.strip("/").split("/")
    if parts[:2] != ["api", "folders"] and parts[:2] != ["api", "datasources"] and parts[:2] != ["api", "dashboards"]:
        return 404, {"message": "Not found"}
    if parts[1] == "folders" and len(parts) == 2 and method == "POST":
        if body["uid"] in state.folders:
            return 412, {"message": "a folder with the same uid already exists"}
        state.folders[body["uid"]] = {"uid": body["uid"], "title": body["title"], "version": 1}
        return 200, state.folders[body["uid"]]
    if parts[1] == "folders" and len(parts) == 3:
        folder = state.folders.get(parts[2])
        if folder is None:
            return 404, {"message": "folder not found", "status": "not-found"}
        if method == "PUT":
            folder.update(title=body["title"], version=folder["version"] + 1)
        return 200, folder
    if parts[1] == "datasources" and parts[2:3] == ["uid"] and len(parts) == 4:
        source = state.datasources.get(parts[3])
        if source is None:
            return 404, {"message": "Data source not found"}
        if method == "PUT":
            source.update(body, version=source["version"] + 1)
            return 200, {"message": "Datasource updated", "datasource": source}
        return 200, source
    if parts[1] == "datasources" and len(parts) == 2 and method == "POST":
        if any(s["name"] == body["name"] for s in state.datasources.values()):
            return 409, {"message": "data source with the same name already exists"}
        state.datasources[body["uid"]] = {**body, "id": len(state.datasources) + 1, "version": 1}
        return 200, {"message": "Datasource added", "datasource": state.datasources[body["uid"]]}
    if parts[1:] == ["dashboards", "db"] and method == "POST":
        return save_dashboard(state, body)
    if parts[1:3] == ["dashboards", "uid"] and method == "GET":
        saved = state.dashboards.get(parts[3])
        return (200, saved) if saved else (404, {"message": "Dashboard not found"})
    return 404, {"message": "Not found"}


def save_dashboard(state: GrafanaState, body: dict[str, Any]) -> tuple[int, Any]:
    dashboard = body["dashboard"]
    if body.get("folderUid") not in state.folders:
        return 400, {"message": "folder not found"}
    existing = state.dashboards.get(dashboard["uid"])
    if existing is not None and not body.get("overwrite"):
        return 412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"}
    version = existing["dashboard"]["version"] + 1 if existing else 1
    state.dashboards[dashboard["uid"]] = {
        "dashboard": {**dashboard, "version": version},
        "meta": {"folderUid": body["folderUid"]},
    }
    return 200, {"status": "success", "uid": dashboard["uid"], "version": version}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: GrafanaState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class FakeGrafana:
    """Serves on a free port of 127.0.0.1 until `close`."""

    def __init__(self, token: str) -> None:
        self.state = GrafanaState(token)
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
