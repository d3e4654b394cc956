"""bench.fmt: numbers with a dash when missing, HTML and markdown escaping, atomic writes."""

from __future__ import annotations

import math
import os
import threading

import pytest

from bench.errors import UserInputError
from bench.fmt import EM_DASH, escape_html, escape_md_cell, finite, html_num, num, write_text_atomic


@pytest.mark.parametrize("spec", [".3f", ".2f", ".0f", ".1f", ".4f", "+.3f", ".3g", ".4g", ".0%", ".1%"])
@pytest.mark.parametrize("value", [0, 1, 0.5, 1 / 3, -2.71828, 1234.5678, 1e-7, 12])
def test_num_is_the_format_spec_the_old_formatters_used(value, spec) -> None:
    assert num(value, spec) == ("{:" + spec + "}").format(value) == f"{value:{spec}}"


def test_missing_numbers() -> None:
    assert num(None) == "-" and num(None, ".0%") == "-" and num(None, missing="n/a") == "n/a"
    assert html_num(None) == EM_DASH == "—" and html_num(0.123456) == "0.123" and html_num(12345.6, ".4g") == "1.235e+04"
    assert num(0.0) == "0.000"  # zero is a number, not a missing one


def test_finite() -> None:
    assert finite(None) is None and finite(math.nan) is None and finite(math.inf) is None and finite(-math.inf) is None
    assert finite(3) == 3.0 and isinstance(finite(3), float) and finite("0.25") == 0.25


def test_escape_html() -> None:
    assert escape_html('<b a="1">&\'') == "&lt;b a=&quot;1&quot;&gt;&amp;&#x27;"
    assert escape_html('"x" <y>', quote=False) == '"x" &lt;y&gt;'
    assert escape_html(None) == "" and escape_html(0) == "0"


def test_escape_md_cell() -> None:
    assert escape_md_cell("a | b\nc") == "a \\| b c" and escape_md_cell(3) == "3"


def test_atomic_write_replaces_the_file_and_leaves_nothing_behind(tmp_path) -> None:
    path = tmp_path / "routing.json"
    write_text_atomic(path, "one\n")
    write_text_atomic(str(path), "two ü\n")
    assert path.read_text(encoding="utf-8") == "two ü\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["routing.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain open(), not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")

    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_directory_is_refused(tmp_path) -> None:
    with pytest.raises(UserInputError, match="got a directory"):
        write_text_atomic(tmp_path, "x")


def test_concurrent_writers_never_mix(tmp_path) -> None:
    path = tmp_path / "out.txt"
    texts = [str(i) * 100_000 for i in range(8)]
    threads = [threading.Thread(target=write_text_atomic, args=(path, t)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_text() in texts  # one writer's whole text, never a blend or a half
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
