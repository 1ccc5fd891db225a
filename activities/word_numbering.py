"""Word's automatic numbering, as Word shows it before a paragraph ("1.", "4.2.1", "a)",
"(iii)", "Article 5", "§ 3", a bullet). python-docx reads the runs' text only; the numbers are
counted from the numbering part (numbering.xml), which a paragraph reaches through its own
w:numPr or its style's (Heading 1..9). Without them a chunk read "Late payment" where the
document reads "4.2 Late payment": an agent reading it back could not cite the clause, and a
search naming the clause had no number to match.

A numbering part that cannot be read, or a reference to a list or level that is not there,
numbers nothing: it never fails the document."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from docx.document import Document
from docx.opc.constants import RELATIONSHIP_TYPE
from docx.opc.part import XmlPart
from docx.oxml.ns import qn
from docx.oxml.parser import parse_xml
from docx.oxml.xmlchemy import BaseOxmlElement

_W_P_PR, _W_NUM_PR, _W_P_STYLE, _W_NUM_ID, _W_ILVL, _W_VAL = (
    qn(f"w:{tag}") for tag in ("pPr", "numPr", "pStyle", "numId", "ilvl", "val")
)
_W_STYLE, _W_STYLE_ID, _W_TYPE, _W_DEFAULT, _W_BASED_ON = (
    qn(f"w:{tag}") for tag in ("style", "styleId", "type", "default", "basedOn")
)
_W_ABSTRACT_NUM, _W_ABSTRACT_NUM_ID, _W_NUM, _W_NUM_STYLE_LINK = (
    qn(f"w:{tag}") for tag in ("abstractNum", "abstractNumId", "num", "numStyleLink")
)
_W_LVL, _W_LVL_OVERRIDE, _W_START_OVERRIDE = (
    qn(f"w:{tag}") for tag in ("lvl", "lvlOverride", "startOverride")
)
_W_START, _W_NUM_FMT, _W_FORMAT, _W_LVL_TEXT, _W_LVL_RESTART, _W_IS_LGL, _W_SUFF = (
    qn(f"w:{tag}")
    for tag in ("start", "numFmt", "format", "lvlText", "lvlRestart", "isLgl", "suff")
)
_W_FONTS, _W_ASCII = f"{qn('w:rPr')}/{qn('w:rFonts')}", qn("w:ascii")
_W_OFF, _ON = frozenset({"0", "false", "off"}), frozenset({"1", "true", "on"})
_LEVELS = 9  # w:ilvl 0-8
_LINKS = 8  # how far basedOn chains and numbering style links are followed (they may loop)
_MAX_LABEL = 64  # characters of a level's text: a label is written before every item
_NUMBER = re.compile(r"-?\d{1,9}")
_PLACEHOLDER = re.compile(r"%([1-9])")
# A bullet drawn in a symbol font, or from the private use area, or a letter ("o" drawn as a
# circle in Courier New) reads as a bullet; a plain character (a dash, "✓", "➢") as written.
_BULLET = "•"
_SYMBOL_FONTS = ("symbol", "wingdings", "webdings")
_ROMAN = (
    (1000, "m"),
    (900, "cm"),
    (500, "d"),
    (400, "cd"),
    (100, "c"),
    (90, "xc"),
    (50, "l"),
    (40, "xl"),
    (10, "x"),
    (9, "ix"),
    (5, "v"),
    (4, "iv"),
    (1, "i"),
)


@dataclass(frozen=True)
class _Level:
    """A list level (w:lvl): how its number is counted and shown."""

    start: int = 0
    fmt: str = "decimal"
    zeros: int = 1  # digits a decimal number is padded to with zeros (decimalZero: 2)
    # w:lvlText, "%1.%2." as (0, ".", 1, "."): the text, and the levels whose numbers it shows
    parts: tuple[str | int, ...] = ()
    restart: int = _LEVELS  # w:lvlRestart: counts again after a level above this number
    legal: bool = False  # w:isLgl: the levels it shows in decimal ("1.1", not "I.1")
    suffix: str = " "


_ANY_LEVEL = _Level()
_NOT_NUMBERS = frozenset({"bullet", "none"})


@dataclass
class _List:
    key: str  # whose counters it counts on
    levels: dict[int, _Level]
    style_levels: dict[str, int] = field(default_factory=dict)  # w:pStyle of a level


class WordNumbering:
    """The label each paragraph of a document shows, counted in document order."""

    def __init__(self, numbering: BaseOxmlElement | None, styles: BaseOxmlElement | None):
        self._abstracts = _by_id(numbering, _W_ABSTRACT_NUM, _W_ABSTRACT_NUM_ID)
        self._nums = _by_id(numbering, _W_NUM, _W_NUM_ID)
        self._styles = _by_id(styles, _W_STYLE, _W_STYLE_ID)
        self._default_style = next(
            (
                style_id
                for style_id, style in self._styles.items()
                if style.get(_W_TYPE) == "paragraph" and style.get(_W_DEFAULT) in _ON
            ),
            None,
        )
        self._lists: dict[str, _List | None] = {}
        self._style_numbers: dict[str | None, tuple[str | None, int | None]] = {}
        self._counters: dict[str, dict[int, int]] = {}

    @classmethod
    def of(cls, document: Document) -> WordNumbering:
        return cls(
            _related_xml(document, RELATIONSHIP_TYPE.NUMBERING),
            _related_xml(document, RELATIONSHIP_TYPE.STYLES),
        )

    def label(self, paragraph: BaseOxmlElement) -> str:
        """The number (and the space after it) that Word shows before `paragraph`, "" for
        none; counts it, so each paragraph is asked once, in document order."""
        if not self._nums:
            return ""
        style_id, num_id, ilvl = _paragraph_numbering(paragraph)
        if num_id is None or ilvl is None:
            style_num_id, style_ilvl = self._style_number(style_id or self._default_style)
            if num_id is None:
                num_id = style_num_id
            if ilvl is None and num_id == style_num_id:
                ilvl = style_ilvl
        numbered = None if num_id is None else self._list(num_id)
        if numbered is None:
            return ""
        if ilvl is None:
            ilvl = numbered.style_levels.get(style_id or "", 0)
        return self._count(numbered, ilvl)

    def _count(self, numbered: _List, ilvl: int) -> str:
        level = numbered.levels.get(ilvl)
        if level is None:
            return ""
        counters = self._counters.setdefault(numbered.key, {})
        counters[ilvl] = counters[ilvl] + 1 if ilvl in counters else level.start
        for deeper in [number for number in counters if number > ilvl]:
            if ilvl < numbered.levels.get(deeper, _ANY_LEVEL).restart:
                del counters[deeper]
        shown = _shown(numbered.levels, counters, level)
        return shown + level.suffix if shown else ""

    def _style_number(self, style_id: str | None) -> tuple[str | None, int | None]:
        """The list (w:numId) and level of a paragraph style, from it or the styles it is
        based on: Heading 2 often names only its level, and takes the list from Heading 1."""
        if style_id not in self._style_numbers:
            num_id, ilvl = None, None
            for style in self._style_chain(style_id):
                reference = style.find(f"{qn('w:pPr')}/{qn('w:numPr')}")
                if reference is not None:
                    num_id = num_id or _child_val(reference, _W_NUM_ID)
                    ilvl = _child_int(reference, _W_ILVL) if ilvl is None else ilvl
            self._style_numbers[style_id] = (num_id, ilvl)
        return self._style_numbers[style_id]

    def _style_chain(self, style_id: str | None) -> list[BaseOxmlElement]:
        chain: list[BaseOxmlElement] = []
        while style_id in self._styles and len(chain) < _LINKS:
            style = self._styles[style_id]
            chain.append(style)
            style_id = _child_val(style, _W_BASED_ON)
        return chain

    def _list(self, num_id: str) -> _List | None:
        if num_id not in self._lists:
            self._lists[num_id] = self._read_list(num_id)
        return self._lists[num_id]

    def _read_list(self, num_id: str) -> _List | None:
        """A list instance (w:num): its abstract list's levels, with the levels and starts it
        overrides. Instances of one abstract list count on together, as in Word, but for one
        that overrides a level ("Restart at 1"): it counts on its own."""
        num = self._nums.get(num_id)
        abstract_id = None if num is None else _child_val(num, _W_ABSTRACT_NUM_ID)
        abstract = self._abstract(abstract_id)
        if num is None or abstract is None:
            return None
        levels = _levels(abstract)
        overrides = num.findall(_W_LVL_OVERRIDE)
        for override in overrides:
            ilvl = _int(override.get(_W_ILVL))
            if ilvl is None:
                continue
            defined, start = override.find(_W_LVL), _child_int(override, _W_START_OVERRIDE)
            level = levels.get(ilvl, _ANY_LEVEL) if defined is None else _level(defined)
            if start is not None:
                level = replace(level, start=start)
            levels[ilvl] = level
        style_levels = {}
        for lvl in abstract.findall(_W_LVL):
            style_id, ilvl = _child_val(lvl, _W_P_STYLE), _int(lvl.get(_W_ILVL))
            if style_id is not None and ilvl is not None:
                style_levels[style_id] = ilvl
        key = f"num {num_id}" if overrides else f"abstract {abstract.get(_W_ABSTRACT_NUM_ID)}"
        return _List(key, levels, style_levels)

    def _abstract(self, abstract_id: str | None) -> BaseOxmlElement | None:
        """The abstract list, through the numbering style it may only link to (a list style
        such as "1 / 1.1 / 1.1.1" picked from Word's gallery)."""
        for _ in range(_LINKS):
            abstract = self._abstracts.get(abstract_id or "")
            link = None if abstract is None else _child_val(abstract, _W_NUM_STYLE_LINK)
            if link is None:
                return abstract
            num = self._nums.get(self._style_number(link)[0] or "")
            abstract_id = None if num is None else _child_val(num, _W_ABSTRACT_NUM_ID)
        return None


def _paragraph_numbering(paragraph: BaseOxmlElement) -> tuple[str | None, str | None, int | None]:
    """The style, list and level a paragraph names. Its children are walked, not looked up
    with `find`, which made extraction three times slower (a paragraph's properties come
    first, and hold a few elements)."""
    style_id, num_id, ilvl = None, None, None
    properties = paragraph[0] if len(paragraph) else None
    if properties is None or properties.tag != _W_P_PR:
        return style_id, num_id, ilvl
    for child in properties:
        if child.tag == _W_P_STYLE:
            style_id = child.get(_W_VAL)
        elif child.tag == _W_NUM_PR:
            for reference in child:
                if reference.tag == _W_NUM_ID:
                    num_id = reference.get(_W_VAL)
                elif reference.tag == _W_ILVL:
                    ilvl = _int(reference.get(_W_VAL))
    return style_id, num_id, ilvl


def _related_xml(document: Document, reltype: str) -> BaseOxmlElement | None:
    """The XML of the document's part of `reltype`; None when there is none, or it is not XML."""
    for relationship in document.part.rels.values():
        if relationship.reltype != reltype or relationship.is_external:
            continue
        part = relationship.target_part
        if isinstance(part, XmlPart):
            element: BaseOxmlElement = part.element
            return element
        try:
            return parse_xml(part.blob)
        except SyntaxError:  # lxml's XMLSyntaxError: not XML, or cut short
            return None
    return None


def _by_id(root: BaseOxmlElement | None, tag: str, id_attribute: str) -> dict[str, BaseOxmlElement]:
    if root is None:
        return {}
    return {element.get(id_attribute, ""): element for element in root.iterchildren(tag)}


def _levels(abstract: BaseOxmlElement) -> dict[int, _Level]:
    levels = {}
    for lvl in abstract.findall(_W_LVL):
        ilvl = _int(lvl.get(_W_ILVL))
        if ilvl is not None and 0 <= ilvl < _LEVELS:
            levels[ilvl] = _level(lvl)
    return levels


def _level(lvl: BaseOxmlElement) -> _Level:
    # Word 2010 writes a format older readers lack (decimalZero, "001, 002, ...") as a
    # w:numFmt in mc:Choice, with a plain one in mc:Fallback: the first is Word's own.
    fmt = lvl.find(f".//{_W_NUM_FMT}")
    kind = "decimal" if fmt is None else fmt.get(_W_VAL, "decimal")
    zeros = 2 if kind == "decimalZero" else 1
    if kind == "custom" and fmt is not None:
        first = (fmt.get(_W_FORMAT) or "").split(",")[0].strip()
        kind, zeros = "decimal", len(first) if first.isdigit() and len(first) < 10 else 1
    restart = _child_int(lvl, _W_LVL_RESTART)
    legal = lvl.find(_W_IS_LGL)
    return _Level(
        start=_child_int(lvl, _W_START) or 0,
        fmt=kind,
        zeros=zeros,
        parts=_bullet(lvl) if kind == "bullet" else _parts(_child_val(lvl, _W_LVL_TEXT) or ""),
        restart=_LEVELS if restart is None else restart,
        legal=legal is not None and _is_on(legal.get(_W_VAL)),
        suffix={"nothing": "", "space": " "}.get(_child_val(lvl, _W_SUFF) or "", " "),
    )


def _parts(text: str) -> tuple[str | int, ...]:
    """A level's text as parts: "%1.%2." as (0, ".", 1, "."); "%" and a digit that names no
    level, as written."""
    pieces = _PLACEHOLDER.split(text[:_MAX_LABEL])
    return tuple(  # split() puts each level's digit at an odd index
        int(piece) - 1 if index % 2 else piece
        for index, piece in enumerate(pieces)
        if index % 2 or piece
    )


def _bullet(lvl: BaseOxmlElement) -> tuple[str, ...]:
    """A bullet as a character: drawn in a symbol font, from the private use area, or as a
    letter ("o" drawn as a circle in Courier New), it reads as "•"; a plain one (a dash,
    "✓") as written."""
    text = (_child_val(lvl, _W_LVL_TEXT) or "")[:_MAX_LABEL]
    font = lvl.find(_W_FONTS)
    symbol_font = font is not None and (font.get(_W_ASCII) or "").lower().startswith(_SYMBOL_FONTS)
    drawn = any(char.isalnum() or "\ue000" <= char <= "\uf8ff" for char in text)
    return () if not text.strip() else (_BULLET,) if symbol_font or drawn else (text,)


def _shown(levels: dict[int, _Level], counters: dict[int, int], level: _Level) -> str:
    """A level's text with each level it names replaced by that level's number, as that
    level shows it (in decimal for a legal level)."""
    shown = []
    for part in level.parts:
        if isinstance(part, str):
            shown.append(part)
            continue
        named = levels.get(part, _ANY_LEVEL)
        value = counters.get(part, named.start)
        legal = level.legal and named.fmt not in _NOT_NUMBERS
        shown.append(str(value) if legal else _formatted(value, named))
    return "".join(shown).strip()


def _formatted(value: int, level: _Level) -> str:
    """`value` in the level's number format; formats not known here show as decimal."""
    if level.fmt in _NOT_NUMBERS:
        return ""
    if level.fmt in ("lowerLetter", "upperLetter") and 0 < value <= 26 * 30:
        letters = chr(ord("a") + (value - 1) % 26) * ((value - 1) // 26 + 1)
        return letters if level.fmt == "lowerLetter" else letters.upper()
    if level.fmt in ("lowerRoman", "upperRoman") and 0 < value < 4000:
        roman = _roman(value)
        return roman if level.fmt == "lowerRoman" else roman.upper()
    return str(value).zfill(level.zeros) if value >= 0 else str(value)


def _roman(value: int) -> str:
    digits = []
    for worth, letters in _ROMAN:
        count, value = divmod(value, worth)
        digits.append(letters * count)
    return "".join(digits)


def _child_val(element: BaseOxmlElement, tag: str) -> str | None:
    child = element.find(tag)
    return None if child is None else child.get(_W_VAL)


def _child_int(element: BaseOxmlElement, tag: str) -> int | None:
    return _int(_child_val(element, tag))


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and _NUMBER.fullmatch(value.strip()) else None


def _is_on(value: str | None) -> bool:
    """A WordprocessingML on/off value: present without a value is on."""
    return value is None or value.lower() not in _W_OFF
