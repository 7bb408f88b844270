"""Tests for the CSV and XML loaders and the shipped E2E data (the WebNLG tests run only when
TINYPFT_DATA is set: WebNLG is never shipped)."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
from pathlib import Path

import pytest

from tinypft.data import (
    WEBNLG_SEEN_CATEGORIES,
    WEBNLG_UNSEEN_CATEGORIES,
    E2EExample,
    e2e_dir,
    e2e_file,
    flatten_pairs,
    linearize_triples,
    load_e2e,
    load_webnlg,
    read_e2e_csv,
    read_webnlg_xml,
    real_data_dir,
    repo_data_dir,
    webnlg_pairs,
    write_e2e_csv,
)

REAL_DATA = os.environ.get("TINYPFT_DATA")
needs_real_data = pytest.mark.skipif(not REAL_DATA, reason="TINYPFT_DATA is not set")


# --- E2E-format CSV ----------------------------------------------------------------------------


def test_read_e2e_csv_handles_crlf_embedded_newlines_and_groups_by_mr(tmp_path):
    path = tmp_path / "e2e.csv"
    path.write_bytes(
        b'mr,ref\r\n'
        b'"name[A], eatType[pub]",A is a pub.\r\n'
        b'"name[B], food[French]","B serves\r\n  French food."\r\n'
        b'"name[A], eatType[pub]","A, a pub."\r\n'
        b'"name[A], eatType[pub]",A is a pub.\r\n'
    )
    examples = read_e2e_csv(path)
    assert [ex.mr for ex in examples] == ["name[A], eatType[pub]", "name[B], food[French]"]
    assert examples[0].refs == ("A is a pub.", "A, a pub.", "A is a pub.")  # duplicates kept
    assert examples[0].slots == {"name": "A", "eatType": "pub"}
    assert examples[1].refs == ("B serves\r\n  French food.",)
    assert len(flatten_pairs(examples)) == 4


def test_write_then_read_round_trips(tmp_path):
    examples = [E2EExample("name[A], near[X, Y]", {"name": "A", "near": "X, Y"}, ('Say "hi",\nA.', "A."))]
    write_e2e_csv(tmp_path / "out.csv", examples)
    assert (tmp_path / "out.csv").read_bytes().startswith(b"mr,ref\n")
    assert read_e2e_csv(tmp_path / "out.csv") == examples


@pytest.mark.parametrize("content, message", [
    ("", "header"), ("meaning,text\n", "header"), ('mr,ref\n"name[A]",x,extra\n', "3 fields"),
    ("mr,ref\nname[A,x\n", "malformed MR"),
])
def test_read_e2e_csv_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_e2e_csv(path)


def test_missing_files_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="TINYPFT_DATA"):
        load_webnlg("dev")  # WebNLG is never shipped
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        real_data_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_e2e("train", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "e2e" / "trainset.csv"))):
        load_e2e("train", data_dir=tmp_path)  # folder exists, file does not: no fallback to data/e2e
    monkeypatch.setenv("TINYPFT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="trainset.csv"):
        load_e2e("train")  # $TINYPFT_DATA is taken at its word, not silently replaced by data/e2e
    with pytest.raises(FileNotFoundError, match="TINYPFT_DATA"):
        load_webnlg("test")
    with pytest.raises(ValueError, match="unknown split"):
        load_e2e("extrap", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        e2e_file("validation")


# --- the shipped E2E data (data/e2e) -----------------------------------------------------------

# SHA-256 of the decompressed CSVs: the files of the E2E NLG Challenge repository, unmodified.
E2E_SHA256 = {
    "trainset.csv": "f27d48df45815288ab15619d47a79028c300fbb7f42e373668aba0b98c1d57c6",
    "devset.csv": "fc26b78cdb849c80545f513b223d1e051138b43882eeb79e3eb153e689c864f9",
    "testset_w_refs.csv": "edc8db685e39bb9824d5bd70c18b1c9b0412d14b527aa960e2d1c8251ee15ccd",
}
E2E_COUNTS = {"train": (42061, 4862), "dev": (4672, 547), "test": (4693, 630)}  # rows, MRs


def test_shipped_e2e_files_are_the_original_csvs():
    folder = repo_data_dir() / "e2e"
    # Exactly these files: a stray plain CSV would be read instead of its .gz (see e2e_file).
    expected = {f"{name}.gz" for name in E2E_SHA256} | {"LICENSE.txt", "README.original.md"}
    assert {p.name for p in folder.iterdir()} == expected
    for name, digest in E2E_SHA256.items():
        with gzip.open(folder / f"{name}.gz", "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    license_text = (folder / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Attribution-ShareAlike" in license_text and "Novikova" in license_text


@pytest.mark.parametrize("split", list(E2E_COUNTS))
def test_shipped_e2e_loads_with_no_setup(split, monkeypatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    assert e2e_dir() == repo_data_dir() / "e2e"
    path = e2e_file(split)
    assert path.parent == repo_data_dir() / "e2e" and path.name.endswith(".csv.gz")
    examples = load_e2e(split)
    rows, mrs = E2E_COUNTS[split]
    assert len(examples) == mrs and len(flatten_pairs(examples)) == rows
    assert all(3 <= len(ex.slots) <= 8 and "name" in ex.slots and ex.refs for ex in examples)
    assert examples == read_e2e_csv(path)


def test_shipped_e2e_keeps_embedded_newlines(monkeypatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    refs = [ref for _, ref in flatten_pairs(load_e2e("train"))]
    assert sum("\n" in ref for ref in refs) == 2


def _mini_csv(name: str) -> str:
    return f'mr,ref\n"name[{name}], eatType[pub]",{name} is a pub.\n'


def test_tinypft_data_and_data_dir_override_the_shipped_files(tmp_path, monkeypatch):
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "trainset.csv").write_text(_mini_csv("Env Arms"), encoding="utf-8")
    other = tmp_path / "other"
    (other / "e2e").mkdir(parents=True)
    (other / "e2e" / "trainset.csv").write_text(_mini_csv("Argument Inn"), encoding="utf-8")
    monkeypatch.setenv("TINYPFT_DATA", str(tmp_path))
    assert e2e_dir() == tmp_path / "e2e" and e2e_file("train") == tmp_path / "e2e" / "trainset.csv"
    [example] = load_e2e("train")
    assert example.slots == {"name": "Env Arms", "eatType": "pub"} and example.refs == ("Env Arms is a pub.",)
    [example] = load_e2e("train", data_dir=other)  # an explicit folder beats the variable
    assert example.slots["name"] == "Argument Inn" and e2e_dir(other) == other / "e2e"
    monkeypatch.setenv("TINYPFT_DATA", "")  # set but empty: as if unset
    assert e2e_dir() == repo_data_dir() / "e2e"


def test_a_plain_csv_wins_over_its_gzip(tmp_path):
    folder = tmp_path / "e2e"
    folder.mkdir()
    with gzip.open(folder / "devset.csv.gz", "wt", encoding="utf-8", newline="") as f:
        f.write(_mini_csv("Gzip Tavern"))
    assert e2e_file("dev", tmp_path) == folder / "devset.csv.gz"  # only the .gz: it is read
    assert load_e2e("dev", tmp_path)[0].slots["name"] == "Gzip Tavern"
    (folder / "devset.csv").write_text(_mini_csv("Plain Tavern"), encoding="utf-8")
    assert e2e_file("dev", tmp_path) == folder / "devset.csv"
    assert [ex.slots["name"] for ex in load_e2e("dev", tmp_path)] == ["Plain Tavern"]


def test_a_truncated_or_corrupt_gzip_is_a_value_error_naming_the_file(tmp_path):
    folder = tmp_path / "e2e"
    folder.mkdir()
    shipped = (repo_data_dir() / "e2e" / "devset.csv.gz").read_bytes()
    path = folder / "devset.csv.gz"
    path.write_bytes(shipped[: len(shipped) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        load_e2e("dev", tmp_path)
    path.write_bytes(b"this is not gzip data at all\n" * 10)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_e2e_csv(path)


def test_a_non_utf8_csv_is_a_value_error_naming_the_file(tmp_path):
    text = 'mr,ref\n"name[Caf\u00e9 Latin], eatType[pub]",Caf\u00e9 Latin is a pub.\n'
    plain = tmp_path / "latin1.csv"
    plain.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(str(plain)) + ".*UTF-8"):
        read_e2e_csv(plain)
    compressed = tmp_path / "latin1.csv.gz"
    compressed.write_bytes(gzip.compress(text.encode("latin-1")))
    with pytest.raises(ValueError, match=re.escape(str(compressed)) + ".*UTF-8"):
        read_e2e_csv(compressed)
    plain.write_bytes(text.encode("utf-8"))  # the same text in UTF-8 reads fine
    assert read_e2e_csv(plain)[0].slots["name"] == "Caf\u00e9 Latin"


# --- WebNLG ------------------------------------------------------------------------------------

WEBNLG_XML = """<?xml version="1.0" encoding="UTF-8"?>
<benchmark><entries>
  <entry category="Airport" eid="Id1" size="2">
    <originaltripleset><otriple>Aarhus | leader | Jacob_Bundsgaard</otriple></originaltripleset>
    <modifiedtripleset>
      <mtriple>Aarhus | leaderName | Jacob_Bundsgaard</mtriple>
      <mtriple>Aarhus_Airport | cityServed | "Aarhus, Denmark"</mtriple>
    </modifiedtripleset>
    <lex comment="good" lid="Id1">Aarhus airport serves Aarhus, led by Jacob Bundsgaard.</lex>
    <lex comment="good" lid="Id2">  Jacob Bundsgaard leads Aarhus.  </lex>
  </entry>
</entries></benchmark>
"""


def test_read_webnlg_xml_uses_modified_triples_and_lex(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(WEBNLG_XML, encoding="utf-8")
    [entry] = read_webnlg_xml(path)
    assert (entry.category, entry.eid, entry.size) == ("Airport", "Id1", 2)
    assert entry.triples == (("Aarhus", "leaderName", "Jacob_Bundsgaard"),
                             ("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"'))
    assert entry.refs == ("Aarhus airport serves Aarhus, led by Jacob Bundsgaard.",
                          "Jacob Bundsgaard leads Aarhus.")  # stripped
    assert linearize_triples(entry.triples) == (
        "Aarhus : leaderName : Jacob Bundsgaard | Aarhus Airport : cityServed : Aarhus, Denmark")
    assert [src for src, _ in webnlg_pairs([entry])] == [linearize_triples(entry.triples)] * 2


def test_read_webnlg_xml_rejects_bad_input(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<benchmark><entries><entry", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid XML"):
        read_webnlg_xml(path)
    broken = WEBNLG_XML.replace("Aarhus | leaderName | Jacob_Bundsgaard", "just text")
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match="malformed triple"):
        read_webnlg_xml(path)


def test_load_webnlg_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="category_set"):
        load_webnlg("test", data_dir=tmp_path, category_set="some")
    with pytest.raises(ValueError, match="only exist in the test split"):
        load_webnlg("train", data_dir=tmp_path, category_set="unseen")


# --- data from $TINYPFT_DATA (counts from the published datasets) -----------------------------


@needs_real_data
@pytest.mark.parametrize("split", list(E2E_COUNTS))
def test_a_real_e2e_folder_holds_the_shipped_data(split, monkeypatch):
    if not (Path(REAL_DATA) / "e2e").is_dir():
        pytest.skip("$TINYPFT_DATA has no e2e/")
    examples = load_e2e(split)
    monkeypatch.delenv("TINYPFT_DATA")
    assert examples == load_e2e(split)  # the same MRs and references, in the same order


@needs_real_data
@pytest.mark.parametrize("split, category_set, entries, refs", [
    ("train", "all", 6940, 18102), ("dev", "all", 872, 2268), ("test", "all", 1862, 4928),
    ("test", "seen", 971, 2495), ("test", "unseen", 891, 2433),
])
def test_real_webnlg_counts(split, category_set, entries, refs):
    examples = load_webnlg(split, category_set=category_set)
    assert len(examples) == entries and sum(len(ex.refs) for ex in examples) == refs
    categories = {ex.category for ex in examples}
    if category_set == "unseen":
        assert categories == set(WEBNLG_UNSEEN_CATEGORIES)
    elif split != "test" or category_set == "seen":
        assert categories == set(WEBNLG_SEEN_CATEGORIES)
    assert all(1 <= ex.size == len(ex.triples) <= 7 and ex.refs and all(ex.refs) for ex in examples)
