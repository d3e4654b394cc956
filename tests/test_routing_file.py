"""bench.routing_file: the one routing.json loader; every reader refuses a bad file alike and reads a good one alike."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from bench.cli import main
from bench.errors import UserInputError
from bench.routing_file import (
    MIGRATIONS,
    MIN_ROUTING_VERSION,
    ROUTING_SCHEMA_VERSION,
    RoutingDoc,
    load_routing,
    parse_routing,
)
from bench.thresholds.document import build, write
from bench.thresholds.gather import gather
from tests.test_thresholds import tier, write_run


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A routing.json as `bench thresholds` writes it: two fake tiers, a real cascade."""
    tmp = tmp_path_factory.mktemp("routing")
    root = write_run(tmp / "results", [tier("small", 0.6, cost=0.0001), tier("big", 0.97, cost=0.01)], n=200,
                     target=0.85)
    return write(build(gather([root])), tmp / "routing.json")


def _doc(good: Path) -> dict[str, Any]:
    return json.loads(good.read_text())


# ---------------------------------------------------------------- every reader, one message

def _router(path: Path, tmp: Path) -> str:
    from bench.router import Router

    with pytest.raises(UserInputError) as exc:
        Router.load(path)
    assert exc.value.exit_code == 2
    return f"error: {exc.value}"


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def _serve(path: Path, tmp: Path, capsys: pytest.CaptureFixture) -> str:
    return _cli(["serve", str(path)], capsys)


def _report(path: Path, tmp: Path, capsys: pytest.CaptureFixture) -> str:
    err = _cli(["report", str(tmp), "-o", str(tmp / "r.html"), "--routing", str(path)], capsys)
    assert not (tmp / "r.html").exists()
    return err


def _compare(path: Path, tmp: Path, capsys: pytest.CaptureFixture) -> str:
    return _cli(["compare", str(tmp), str(tmp), "--routing", str(path)], capsys)


def _break_threshold(doc: dict[str, Any]) -> str:
    tiers = doc["tasks"]["tickets"]["tiers"]
    i = next(i for i, t in enumerate(tiers) if t["accept_if"]["signal"] == "confidence")
    tiers[i]["accept_if"]["threshold"] = None
    return f"tasks.tickets.tiers.{i}.accept_if.threshold: not a valid routing file: None is not of type 'number'"


def _drop_guarantee(doc: dict[str, Any]) -> str:
    del doc["tasks"]["tickets"]["guarantee"]
    return "tasks.tickets: not a valid routing file: 'guarantee' is a required property"


def _bad_status(doc: dict[str, Any]) -> str:
    doc["tasks"]["tickets"]["status"] = "fine"
    return "tasks.tickets.status: not a valid routing file: 'fine' is not one of"


def _newer(doc: dict[str, Any]) -> str:
    doc["schema_version"] = ROUTING_SCHEMA_VERSION + 1
    return f"schema_version: schema_version {ROUTING_SCHEMA_VERSION + 1} is newer than this bench understands"


def _v1(doc: dict[str, Any]) -> str:
    doc["schema_version"] = 1
    return "regenerate it with 'bench thresholds RESULTS -o FILE'"


BROKEN = {"threshold": _break_threshold, "guarantee": _drop_guarantee, "status": _bad_status, "newer": _newer,
          "v1": _v1}
# The command-line readers, each where its extra is installed (the router and compare need none).
NEEDS = {"serve": ("fastapi", "uvicorn", "prometheus_client"), "report": ("plotly",), "compare": ()}
READERS = {name: fn for name, fn in (("serve", _serve), ("report", _report), ("compare", _compare))
           if all(find_spec(m) for m in NEEDS[name])}


@pytest.mark.parametrize("name", [*BROKEN, "bad-json", "nan", "list"])
def test_every_reader_refuses_a_bad_file_with_the_same_message(good: Path, tmp_path: Path, name: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "routing.json"
    if name in BROKEN:
        doc = _doc(good)
        expected = BROKEN[name](doc)
        path.write_text(json.dumps(doc, indent=2))
    elif name == "bad-json":
        path.write_text('{\n  "schema_version": 3,\n  "tasks": {oops}\n}\n')
        expected = f"{path}:3: not valid JSON: Expecting property name enclosed in double quotes (column 13)"
    elif name == "nan":
        path.write_text(good.read_text().replace('"target": 0.85', '"target": NaN'))
        expected = "not valid JSON: NaN is not a JSON number (bench writes null)"
    else:
        path.write_text("[1, 2]")
        expected = "expected a JSON object (a routing file), got a JSON list"
    messages = {"router": _router(path, tmp_path)}
    for reader, fn in READERS.items():
        messages[reader] = fn(path, tmp_path, capsys)
    assert len(set(messages.values())) == 1, messages  # one loader: one message, word for word
    message = messages["router"]
    assert message.startswith(f"error: {path}") and expected in message


def test_a_missing_file_is_refused_by_every_reader(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "nope.json"
    messages = {"router": _router(path, tmp_path)} | {r: fn(path, tmp_path, capsys) for r, fn in READERS.items()}
    for reader, message in messages.items():
        assert message.startswith(f"error: {path}") and message.endswith("routing file not found"), reader
    assert messages["compare"] == f"error: {path}: --routing: routing file not found"


# ---------------------------------------------------------------- a good file, read alike

def test_a_good_file_loads_identically_in_router_serve_report_and_compare(good: Path) -> None:
    from bench.compare.core import load_routing as compare_loads
    from bench.router import Router

    docs = {"loader": load_routing(good), "router": Router.load(good).doc, "compare": compare_loads(good)}
    try:
        from bench.report.data import load_routing as report_loads

        docs["report"] = report_loads(good)
    except ImportError:  # the report extra (plotly) is not installed
        pass
    try:
        from bench.serve.app import create_app

        docs["serve"] = create_app(good).state.router.doc
    except ImportError:  # the serve extra (fastapi) is not installed
        pass
    first = docs["loader"]
    assert isinstance(first, RoutingDoc) and first.path == str(good) and first.migrated_from is None
    for reader, doc in docs.items():
        assert doc == first and doc.as_dict() == first.as_dict(), reader
    assert first.as_dict() == _doc(good)  # every key kept as found, extra ones included
    task = first.task("tickets")
    assert task.default == task.policy.chain[0] and task.tier(task.default).accept_if.signal == "confidence"


def test_extra_keys_anywhere_are_kept(good: Path, tmp_path: Path) -> None:
    doc = _doc(good)
    doc["from_a_newer_writer"] = {"any": ["shape", 1]}
    doc["tasks"]["tickets"]["tiers"][0]["gpu_note"] = None
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(doc))
    loaded = load_routing(path)
    assert loaded.model_extra["from_a_newer_writer"] == {"any": ["shape", 1]}
    assert loaded.task("tickets").tiers[0].model_extra["gpu_note"] is None
    assert loaded.as_dict() == doc


def test_unknown_task_names_the_close_one(good: Path) -> None:
    with pytest.raises(UserInputError, match="did you mean 'tickets'") as exc:
        load_routing(good).task("ticket")
    assert exc.value.file == str(good) and exc.value.field == "tasks"


def test_a_dict_given_to_the_router_is_checked_by_the_same_rules(good: Path) -> None:
    from bench.router import Router

    doc = _doc(good)
    assert Router(doc).doc == parse_routing(doc)
    _break_threshold(doc)
    with pytest.raises(UserInputError, match="accept_if.threshold"):
        Router(doc, "mem.json")


# ---------------------------------------------------------------- versions

def test_every_supported_older_version_has_a_migration_step() -> None:
    assert sorted(MIGRATIONS) == list(range(MIN_ROUTING_VERSION, ROUTING_SCHEMA_VERSION))


def _as_v2(good: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """The good file as a schema 2 writer wrote it: no pre-router, no policy families."""
    doc = _doc(good)
    doc["schema_version"] = 2
    for t in doc["tasks"].values():
        t.pop("prerouter", None)
        t.pop("families", None)
        t.pop("prerouting", None)
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_a_schema_2_file_is_migrated_and_read_by_every_reader(good: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from bench.compare.core import load_routing as compare_loads
    from bench.router import Router

    path, v2 = _as_v2(good, tmp_path)
    loaded = load_routing(path)
    assert loaded.schema_version == ROUTING_SCHEMA_VERSION and loaded.migrated_from == 2
    assert loaded.as_dict() == v2 | {"schema_version": ROUTING_SCHEMA_VERSION}
    assert loaded.task("tickets").prerouter is None
    new = load_routing(good)
    router, current = Router.load(path), Router.load(good)
    assert router.chain("tickets") == current.chain("tickets") and router.first("tickets") == current.first("tickets")
    small = router.first("tickets")
    t = new.task("tickets").tier(small).accept_if.threshold
    assert router.accept("tickets", small, t, True) and not router.accept("tickets", small, t - 0.01, True)
    assert compare_loads(path) == loaded
    assert json.loads(path.read_text())["schema_version"] == 2  # reading never rewrites the file
    plotly = pytest.importorskip("plotly")
    assert plotly
    from bench.report.routing import render_routing

    html = render_routing(loaded, str(path))
    assert "schema 2, read as 3" in html and "accept if" in html


def test_the_version_is_checked_before_the_schema(good: Path, tmp_path: Path) -> None:
    """A newer file may have changed any field: it is refused for its version, not for a field it broke."""
    doc = _doc(good)
    doc["schema_version"] = ROUTING_SCHEMA_VERSION + 1
    doc["tasks"] = ["changed shape"]
    path = tmp_path / "future.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserInputError) as exc:
        load_routing(path)
    assert exc.value.field == "schema_version" and exc.value.hint == "upgrade bench"
