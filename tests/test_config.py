"""Suite loading: every bad suite gives exit 2 with file, line, field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.config import load_suite
from bench.errors import UserInputError
from tests.conftest import FAKE_SUITE, write_suite


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_valid_suite_loads(fake_suite: Path) -> None:
    suite = load_suite(fake_suite)
    assert suite.kind == "classify"
    assert suite.task.labels == ["billing", "technical"]
    assert suite.sha256 and len(suite.sha256) == 64


def test_all_shipped_suites_validate(capsys) -> None:
    suites = sorted(str(p) for p in (Path(__file__).parent.parent / "suites").glob("*.yaml"))
    assert len(suites) == 5
    code, out, err = run_cli(capsys, "validate", *suites)
    assert code == 0, err
    assert out.count("ok:") == 5


@pytest.mark.parametrize(
    ("replace", "with_", "line", "field", "words"),
    [
        ("target: 0.6", "target: 0.6\ntargte: 0.7", 13, "targte", ["unknown key", "did you mean 'target'"]),
        ("  max_tokens: 8", "  max_tokens: -3", 14, "generation.max_tokens", ["greater than 0"]),
        ("  kind: classify", "  kind: clasify", 2, "task", ["unknown kind 'clasify'"]),
        ("  reference_field: label", "  reference_feld: label", 8, "dataset.reference_feld",
         ["unknown key", "did you mean 'reference_field'"]),
        ("  template: \"Ticket: {text}\"", "  template: \"Ticket: {text!r}\"", 11, "prompt.template",
         ["not a plain field name"]),
        ("    - kind: fake", "    - kind: fake\n      acuracy: 1", 19, "matrix.backends.0.acuracy",
         ["did you mean 'accuracy'"]),
    ],
)
def test_bad_suite_names_file_line_field(tmp_path, capsys, replace, with_, line, field, words) -> None:
    body = FAKE_SUITE.replace(replace, with_)
    assert body != FAKE_SUITE
    path = write_suite(tmp_path, body)
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert f"{path}:{line}: {field}:" in err, err
    for w in words:
        assert w in err
    assert "Traceback" not in err


def test_run_rejects_bad_suite_before_anything(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, FAKE_SUITE.replace("target: 0.6", "target: high"))
    code, out, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"))
    assert code == 2
    assert "target" in err and "valid number" in err
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_and_missing_file(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, "name: x\ntask: [unclosed\n")
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "invalid YAML" in err and f"{path}:" in err
    code, _, err = run_cli(capsys, "validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "file not found" in err


def test_duplicate_key_is_an_error(tmp_path) -> None:
    path = write_suite(tmp_path, FAKE_SUITE + "target: 0.9\n")
    with pytest.raises(UserInputError) as exc:
        load_suite(path)
    assert "duplicate key 'target'" in str(exc.value)


def test_suite_cannot_run_code(tmp_path) -> None:
    path = write_suite(tmp_path, FAKE_SUITE.replace("target: 0.6", "target: !!python/object/apply:os.system ['true']"))
    with pytest.raises(UserInputError) as exc:
        load_suite(path)
    assert "invalid YAML" in str(exc.value)


@pytest.mark.parametrize(
    ("rows", "body_change", "words"),
    [
        ([], None, ["dataset file is empty"]),
        ([{"id": "a", "text": "x"}], None, ["has no value for ['label']", "dataset.reference_field"]),
        ([{"id": "a", "text": "x", "label": "shipping"}], None, ["label set does not cover", "task.labels"]),
        ([{"id": "a", "text": "x", "label": "billing"}], ("{text}", "{text} {customer}"),
         ["template names ['customer']", "prompt.template"]),
        ([{"id": "a", "text": "x", "label": "billing"}, {"id": "a", "text": "y", "label": "billing"}], None,
         ["duplicate sample id 'a'"]),
    ],
)
def test_bad_data_exits_2_before_any_model(tmp_path, capsys, rows, body_change, words) -> None:
    body = FAKE_SUITE if body_change is None else FAKE_SUITE.replace(*body_change)
    path = write_suite(tmp_path, body, rows=rows)
    code, _, err = run_cli(capsys, "run", str(path), "--results", str(tmp_path / "r"))
    assert code == 2, err
    for w in words:
        assert w in err, err
    assert str(path) in err
    assert not (tmp_path / "r").exists()


def test_missing_dataset_file(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, FAKE_SUITE.replace("path: data.jsonl", "path: missing.jsonl"))
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "dataset file not found" in err and f"{path}:6: dataset.path" in err


def test_broken_jsonl_line_is_named(tmp_path, capsys) -> None:
    path = write_suite(tmp_path, FAKE_SUITE)
    (tmp_path / "data.jsonl").write_text('{"id": "a", "text": "x", "label": "billing"}\n{"id": "b", oops\n')
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "line 2: not valid JSON" in err


def test_unknown_model_did_you_mean(tmp_path, capsys, fake_suite) -> None:
    code, _, err = run_cli(capsys, "run", str(fake_suite), "--models", "smollm2-135m-instrct",
                           "--results", str(tmp_path / "r"))
    assert code == 2 and "did you mean 'smollm2-135m-instruct'" in err
    body = FAKE_SUITE.replace("models: [smollm2-135m-instruct, ", "models: [smolm2, ")
    path = write_suite(tmp_path / "b", body)
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "unknown model 'smolm2'" in err and "matrix.models" in err


def test_bad_flags_exit_2(capsys, fake_suite) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(fake_suite), "--limit", "0"])
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def test_backends_describe_themselves_and_no_module_tests_their_names() -> None:
    """What a backend can do is registered with it (bench.registry); code asks the registry, not kind names."""
    import re
    from pathlib import Path

    import bench
    from bench.registry import BACKENDS, BackendTraits, backend_traits

    for name in BACKENDS.names():
        assert isinstance(backend_traits(name), BackendTraits), name
    assert backend_traits("openai").in_process is False and backend_traits("fake").loads_model_file is False
    http, local = backend_traits("openai"), backend_traits("llamacpp")
    assert (http.priced_by, http.measures_memory, http.locality_from) == ("token", False, "config")
    assert (local.priced_by, local.measures_memory, local.locality_from) == ("hour", True, "machine")
    pattern = re.compile(r"""kind["']?\)? *(==|!=) *["'](fake|llamacpp|vllm)["']|LOCAL_KINDS""")
    root = Path(bench.__file__).parent
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "registry.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, offenders
