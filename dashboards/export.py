"""The dashboards as the JSON files Grafana's file provider reads (dashboards/json/, one file per board).

The files are generated, committed, and compared with a fresh rendering by tests/dashboards/test_export.py, so
that a change to a board's code that was not exported fails the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from dashboards.boards import BOARDS

# dashboards/json, which docker-compose.yml mounts for the provider in dashboards/provisioning/dashboards/.
DEFAULT_FOLDER: Final = Path(__file__).resolve().parent / "json"


def render_all() -> dict[str, dict[str, Any]]:
    """Every board as Grafana's dashboard JSON model, by uid."""
    rendered: dict[str, dict[str, Any]] = {}
    for build in BOARDS:
        model: dict[str, Any] = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        rendered[model["uid"]] = model
    return rendered


def file_text(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name → content, as `write` would leave the folder."""
    return {f"{uid}.json": file_text(model) for uid, model in render_all().items()}


def write(folder: Path = DEFAULT_FOLDER) -> list[Path]:
    """Write every board to folder (created if missing) and remove JSON files of boards that no longer exist."""
    folder.mkdir(parents=True, exist_ok=True)
    files = expected_files()
    for stale in folder.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = folder / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def differences(folder: Path = DEFAULT_FOLDER) -> list[str]:
    """What is out of date in folder: missing, changed or left-over files; empty when the export is current."""
    files = expected_files()
    found = {path.name: path.read_text(encoding="utf-8") for path in folder.glob("*.json")} if folder.is_dir() else {}
    problems = [f"{name}: missing" for name in files if name not in found]
    problems += [f"{name}: differs from the code" for name in files if name in found and found[name] != files[name]]
    problems += [f"{name}: no board has this uid" for name in found if name not in files]
    return sorted(problems)
