"""bench report: data layer, figures, page structure, escaping, routing section, PNG export and bad inputs."""

from __future__ import annotations

import json
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest_report import XSS_ERROR, XSS_INPUT, XSS_OUTPUT, make_results, routing_doc

from bench.cli import main
from bench.errors import UserInputError
from bench.report import build_report, load_report_data
from bench.report.data import frontier, quant_deltas, thin
from bench.report.html import build_page, script_json
from bench.results.schema import cell_id
from bench.results.store import read_samples

SECTIONS = ('id="overview"', 'id="task-1"', 'id="examples"', "Quality against cost",
            "The quality each quantization costs", "Speed", "Memory", "Latency distributions", "Example answers")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def evil_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("evil"), evil=True)


class Tags(HTMLParser):
    """Every start tag, and the text of each <script> (the parser treats script content as raw text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(html: str) -> Tags:
    p = Tags()
    p.feed(html)
    return p


# ---------------------------------------------------------------- the data layer

def test_data_layer_flattens_two_machines_and_quantizations(results: Path) -> None:
    data = load_report_data([results])
    assert len(data.runs) == 2
    assert {c["hardware"] for c in data.cells} >= {"h100-sxm-cloud"} and len({c["hardware"] for c in data.cells}) == 2
    assert {c["quantization"] for c in data.cells} == {"Q8_0", "Q4_K_M", "Q2_K"}
    assert len(data.cells) == 12 and len({c["label"] for c in data.cells}) == 12
    h100 = [c for c in data.cells if c["hardware"] == "h100-sxm-cloud"]
    assert all(c["decode_ceiling_tps"] == 9000.0 and c["bandwidth_utilization"] == 0.55 for c in h100)
    assert all(c["cost_per_1k_usd"] and c["quality"] is not None and c["ci_low"] <= c["quality"] for c in data.cells)
    assert all(len(data.dists[c["key"]]["latency"]) == 40 for c in data.cells)
    assert data.tasks[0]["key"] == "tickets" and data.tasks[0]["target"] == 0.8
    assert data.examples["tickets"] and all(ex["input"] and ex["answers"] for ex in data.examples["tickets"])


def test_quantization_deltas_are_paired_against_the_best(results: Path) -> None:
    data = load_report_data([results])
    deltas = quant_deltas(data.task_cells("tickets"), data.scores)
    q2 = [d for d in deltas if d["quantization"] == "Q2_K"]
    assert len(q2) == 2 and all(d["delta"] < -0.1 and d["ci_high"] < 0 and d["n"] == 40 for d in q2)
    assert all(d["best_quantization"] != "Q2_K" for d in q2)
    assert sum(d["is_best"] for d in deltas) == 4  # two models with several quants, on two machines
    assert not any(d["model"] == "qwen2.5-coder-1.5b-instruct" for d in deltas)  # one quant only: nothing to cost


def test_frontier_and_thinning() -> None:
    pts = [(1.0, 0.5, "a"), (2.0, 0.4, "b"), (2.0, 0.7, "c"), (3.0, 0.7, "d"), (4.0, 0.9, "e")]
    assert frontier(pts) == ["a", "c", "e"]
    assert frontier(pts, higher_is_better=False) == ["a", "b"]
    values = [float(i) for i in range(100_000)]
    small = thin(values, 500)
    assert len(small) == 500 and small[0] == 0.0 and small[-1] == 99_999.0
    assert thin([3.0, 1.0]) == [3.0, 1.0]


def test_run_without_summary_is_summarised_from_its_samples(results: Path, tmp_path: Path) -> None:
    import shutil

    run = next(p.parent for p in results.rglob("summary.json"))
    copy = tmp_path / "tickets" / run.name
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    with (copy / "samples.jsonl").open("a") as f:
        f.write('{"schema_version": 1, "cell": {"mod')  # a torn last line, as a killed run leaves
    data = load_report_data([tmp_path])
    assert len(data.cells) == 6 and all(c["quality"] is not None and c["ttft_p50"] for c in data.cells)


def test_lean_sample_reading_matches_full_reading(results: Path) -> None:
    path = next(results.rglob("samples.jsonl"))
    full = read_samples(path)
    lean = read_samples(path, lean=True)
    assert len(full) == len(lean) and "timings" in full[0] and "timings" not in lean[0]
    assert [{k: v for k, v in r.items() if k not in ("timings", "token_logprobs")} for r in full] == lean


# ---------------------------------------------------------------- the page

def test_report_has_every_section_and_plotly_once(results: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(results), "-o", str(out)]) == 0
    assert "report:" in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    for marker in SECTIONS:
        assert marker in html, marker
    assert html.count("plotly.js v") == 1  # the library's banner: embedded exactly once
    tags = parse(html)
    scripts = [a for t, a in tags.tags if t == "script"]
    assert all("src" not in a for a in scripts)  # nothing loaded from anywhere: it opens offline
    assert not [a for t, a in tags.tags if t == "link"]
    slots = [a["id"] for t, a in tags.tags if t == "div" and a.get("class") == "figure"]
    assert len(slots) == 5  # quality-cost, quantization, speed, memory, latency
    body = next(a for t, a in tags.tags if t == "body")
    assert body["data-figures-expected"] == "5"
    payload = json.loads(next(s for s in tags.scripts if s.startswith("[{")))
    assert [p["id"] for p in payload] == slots
    names = {tr.get("name") for p in payload for tr in p["figure"]["data"]}
    assert {"cost-quality frontier", "roofline decode ceiling", "h100-sxm-cloud"} <= names
    for c in ("cloud-vm-2c", "h100-sxm-cloud", "Q2_K", "qwen2.5-coder-1.5b-instruct"):
        assert c in html


def test_every_piece_of_run_text_is_escaped(evil_results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    assert main(["report", str(evil_results), "-o", str(out)]) == 0
    html = out.read_text(encoding="utf-8")
    tags = parse(html)
    assert not [t for t, a in tags.tags if t == "img"]  # the payloads never became elements
    assert not [a for t, a in tags.tags for k in a if k.startswith("on")]
    assert len(tags.scripts) == 4  # diagnostics, plotly.js, the figure data, the driver: no injected script
    assert "alert(" not in "".join(tags.scripts[2:])
    # ...and they show as text: the answers, the error message (a tooltip and a cell) and the dataset input
    assert "&lt;script&gt;alert(1)&lt;/script&gt; and &lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;b&gt;bold?&lt;/b&gt;&lt;/script&gt;&lt;img src=x onerror=alert(3)&gt;" in html
    assert "Route support tickets &lt;to&gt; queues &amp; more" in html
    for raw in (XSS_OUTPUT, XSS_ERROR, XSS_INPUT.strip(), "<to>"):
        assert raw not in html


def test_script_json_cannot_break_out() -> None:
    s = script_json(json.dumps({"a": "</script><img src=x>", "b": "x\u2028y\u2029z", "c": "<!-- & -->"},
                               ensure_ascii=False))
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s and "\u2029" not in s
    assert json.loads(s) == {"a": "</script><img src=x>", "b": "x\u2028y\u2029z", "c": "<!-- & -->"}


def test_model_names_in_figures_are_escaped(results: Path, tmp_path: Path) -> None:
    data = load_report_data([results])
    data.cells[0]["label"] = data.cells[0]["model"] = "evil</script><img src=x onerror=alert(9)>"
    data.cells[0]["hardware"] = "<b>hw</b>"
    html, figures = build_page(data)
    assert "<img" not in html.split("plotly.js v")[0] and "alert(9)" in html
    assert "<td>evil&lt;/script&gt;&lt;img" in html  # the overview table
    # figure text: escaped for plotly's labels, then for the <script> block
    assert "evil\\u0026lt;" in html and "evil\\u0026lt;/script" not in html.split("plotly.js v")[1]
    assert not [t for t, a in parse(html).tags if t == "img"]
    assert any("evil&lt;/script&gt;" in json.dumps(fig.to_plotly_json(), default=str) for _, _, fig in figures)


def test_routing_section(results: Path, tmp_path: Path) -> None:
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(routing_doc(results)))
    out = tmp_path / "report.html"
    assert main(["report", str(results), "-o", str(out), "--routing", str(routing)]) == 0
    html = out.read_text(encoding="utf-8")
    assert 'id="routing"' in html and "Routing policy" in html
    assert "confidence ≥ -0.3" in html and "always (final tier)" in html
    assert "0.860 [0.800, 0.900]" in html and "41.0%" in html  # expected quality and escalation
    assert "vs_always_largest_usd_per_1k" in html and "always smallest" in html  # savings, baselines
    assert "&lt;i&gt;holdout&lt;/i&gt;" in html
    assert "smollm2-135m-instruct Q8_0 (fake, h100-sxm-cloud)" in html  # the default tier as a label
    payload = json.loads(next(s for s in parse(html).scripts if s.startswith("[{")))
    assert any(tr.get("name") == "routing policy (expected, holdout)" for p in payload for tr in p["figure"]["data"])


def test_routing_extra_keys_of_any_shape_still_render(results: Path, tmp_path: Path) -> None:
    """Keys CONTRACT.md does not fix may have any shape: the report shows them as found."""
    doc = routing_doc(results)
    task = doc["tasks"]["tickets"]
    never = {**task["tiers"][0], "cell": "x", "accept_if": {"signal": "never", "threshold": None}}
    del never["cell_detail"]  # a tier without one is shown by its cell id
    excluded = {**task["tiers"][0], "cell": "y", "eligible": False, "excluded_because": ["cloud tier on sensitive data"],
                "weird": ["not", {"a": "dict"}, None]}
    task["tiers"][1:1] = [never, excluded]
    task["other"] = ["odd", {"k": [1, {"deep": True}]}]
    doc["extra"] = {"k": [1, 2]}
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(doc))
    html = build_report([str(results)], routing=str(routing))
    assert 'id="routing"' in html and "odd" in html and "deep" in html and "Other fields" in html
    assert "never (not in the policy)" in html and "not eligible: cloud tier on sensitive data" in html
    assert "<td>x</td>" in html


def test_routing_the_router_refuses_is_refused_by_the_report(results: Path, tmp_path: Path, capsys) -> None:
    """The report once rendered any shape; it now reads through the one loader, so a file the router would refuse
    is not shown as a policy: exit 2, naming the file and the field."""
    doc = routing_doc(results)
    doc["tasks"]["tickets"]["tiers"][0]["accept_if"] = {"signal": "confidence", "threshold": None}
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    assert main(["report", str(results), "-o", str(out), "--routing", str(routing)]) == 2
    err = capsys.readouterr().err
    assert f"{routing}: tasks.tickets.tiers.0.accept_if.threshold: not a valid routing file" in err
    assert "Traceback" not in err and not out.exists()


def test_report_reads_the_routing_json_bench_thresholds_writes(results: Path, tmp_path: Path) -> None:
    pytest.importorskip("bench.thresholds.cli", reason="bench thresholds is not in this checkout")
    routing = tmp_path / "routing.json"
    assert main(["thresholds", str(results), "-o", str(routing)]) == 0
    out = tmp_path / "report.html"
    assert main(["report", str(results), "-o", str(out), "--routing", str(routing)]) == 0
    html = out.read_text(encoding="utf-8")
    assert 'id="routing"' in html and "Expected on holdout" in html and "accept if" in html


# ---------------------------------------------------------------- bad input, PNG, speed

@pytest.mark.parametrize("content", [None, "{not json", '{"tasks": {}}', '{"schema_version": 1}', "[1]",
                                     '{"schema_version": 99, "tasks": {}}'])
def test_unreadable_routing_is_a_user_error(results: Path, tmp_path: Path, content: str | None, capsys) -> None:
    routing = tmp_path / "routing.json"
    if content is not None:
        routing.write_text(content)
    with pytest.raises(UserInputError) as exc:
        load_report_data([results], routing=routing)
    assert "routing.json" in str(exc.value)
    assert main(["report", str(results), "-o", str(tmp_path / "r.html"), "--routing", str(routing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_no_runs_is_a_user_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(UserInputError):
            load_report_data([target])
        assert main(["report", str(target), "-o", str(tmp_path / "r.html")]) == 2
        assert "Traceback" not in capsys.readouterr().err
    run = tmp_path / "s" / "r1"  # a run that wrote its manifest and nothing else yet
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"schema_version": 1, "run_id": "r1"}))
    with pytest.raises(UserInputError, match="no cells"):
        load_report_data([tmp_path / "s"])
    (run / "samples.jsonl").write_text('{"schema_version": 1}\n' + "garbage\n" + "{}\n")
    with pytest.raises(UserInputError, match="line 1: a sample row needs cell"):  # a version alone is no row
        load_report_data([tmp_path / "s"])
    (run / "samples.jsonl").write_text("garbage\n" + "{}\n")
    with pytest.raises(UserInputError, match="line 1 is not valid JSON"):
        load_report_data([tmp_path / "s"])


def test_output_that_is_a_directory_is_a_user_error(results: Path, tmp_path: Path) -> None:
    assert main(["report", str(results), "-o", str(tmp_path)]) == 2


def test_png_without_kaleido_says_so_and_still_writes_html(results: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido now raises ImportError
    out = tmp_path / "report.html"
    assert main(["report", str(results), "-o", str(out), "--png", str(tmp_path / "png")]) == 0
    assert out.exists()
    err = capsys.readouterr().err
    assert "PNG export skipped" in err and "kaleido is not installed" in err


def test_png_export_with_kaleido(results: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("kaleido", reason="kaleido is not installed: PNG export is covered by the skip-note test")
    out = tmp_path / "report.html"
    assert main(["report", str(results), "-o", str(out), "--png", str(tmp_path / "png")]) == 0
    pngs = sorted((tmp_path / "png").glob("*.png"))
    captured = capsys.readouterr()
    if not pngs:  # kaleido present but no browser for it: the note must say so
        assert "PNG export skipped" in captured.err
        pytest.skip(f"kaleido could not render here: {captured.err.strip()}")
    assert len(pngs) == 5 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def _synthetic_run(root: Path, n_rows: int, n_cells: int) -> Path:
    run = root / "big" / "20260101T000000Z-beef"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"schema_version": 1, "run_id": run.name, "suite": {
        "name": "big", "task": "classify", "metric": "accuracy", "target": 0.8}}))
    per = n_rows // n_cells
    with (run / "samples.jsonl").open("w") as f:
        for c in range(n_cells):
            cell = {"model": f"m{c % 5}", "quantization": ("Q8_0", "Q4_K_M", "Q2_K", "F16")[c // 5 % 4],
                    "backend": "fake", "hardware": "hw", "gen": "g"}
            cid = cell_id(cell)
            for i in range(per):
                t = (i * 7919 % 1000) / 10000
                f.write(json.dumps({
                    "schema_version": 1, "cell": cell, "cell_id": cid, "sample_id": f"s{i}",
                    "split": "holdout" if i % 2 else "calibration", "output": "billing", "score": float(i % 3 > 0),
                    "verified": True, "confidence": -0.1, "prompt_tokens": 100, "completion_tokens": 10,
                    "ttft_s": t, "latency_s": t + 0.2, "cost_usd": 1e-5, "error": None, "metric": "accuracy",
                    "timings": {"t_start": 0, "t_prefill_end": t, "t_first_token": t,
                                "token_times": [t + k * 0.02 for k in range(10)], "t_end": t + 0.2},
                    "rss_peak_mb": 500.0}) + "\n")
    return root


@pytest.mark.slow
def test_report_from_100k_sample_rows_takes_seconds(tmp_path: Path) -> None:
    root = _synthetic_run(tmp_path, 100_000, 20)
    t0 = time.perf_counter()
    html = build_report([str(root)])
    elapsed = time.perf_counter() - t0
    assert 'data-figures-expected="5"' in html
    assert len(html) < 12 * 2**20  # latencies are thinned, not embedded 100k at a time
    assert elapsed < 60, f"report from 100k rows took {elapsed:.1f} s"
