"""Tests for the CSV and XML loaders (real-data tests run only when TINYPFT_DATA is set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tinypft.data import (
    WEBNLG_SEEN_CATEGORIES,
    WEBNLG_UNSEEN_CATEGORIES,
    E2EExample,
    flatten_pairs,
    linearize_triples,
    load_e2e,
    load_synth_e2e,
    load_webnlg,
    read_e2e_csv,
    read_webnlg_xml,
    real_data_dir,
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


def test_synthetic_loader_reads_every_split():
    for split, (n_mrs, n_refs) in {"train": (2000, 6000), "dev": (300, 1500), "test": (300, 1500),
                                   "extrap": (300, 1500)}.items():
        examples = load_synth_e2e(split)
        assert len(examples) == n_mrs and len(flatten_pairs(examples)) == n_refs
    with pytest.raises(ValueError, match="unknown split"):
        load_synth_e2e("validation")


def test_missing_files_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYPFT_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="TINYPFT_DATA"):
        load_e2e("train")
    with pytest.raises(FileNotFoundError, match="TINYPFT_DATA"):
        load_webnlg("dev")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        real_data_dir(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="trainset.csv"):
        load_e2e("train", data_dir=tmp_path)  # folder exists, file does not
    monkeypatch.setenv("TINYPFT_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="TINYPFT_DATA"):
        load_webnlg("test")
    with pytest.raises(FileNotFoundError, match="python -m tinypft.data"):
        load_synth_e2e("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        load_e2e("extrap", data_dir=tmp_path)


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


# --- real data (counts from the published datasets) --------------------------------------------


@needs_real_data
@pytest.mark.parametrize("split, rows, mrs", [
    ("train", 42061, 4862), ("dev", 4672, 547), ("test", 4693, 630),
])
def test_real_e2e_counts(split, rows, mrs):
    examples = load_e2e(split)
    assert len(examples) == mrs and len(flatten_pairs(examples)) == rows
    assert all(3 <= len(ex.slots) <= 8 and "name" in ex.slots for ex in examples)
    assert examples == load_e2e(split, data_dir=Path(REAL_DATA))


@needs_real_data
def test_real_e2e_keeps_embedded_newlines():
    refs = [ref for _, ref in flatten_pairs(load_e2e("train"))]
    assert sum("\n" in ref for ref in refs) == 2


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
