"""Real documents built in memory for tests: PDFs with reportlab, DOCX with python-docx."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable

import docx
import pypdf
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas


def make_pdf(pages: list[str]) -> bytes:
    """A PDF with one page per string; each line of a string is drawn as one text line."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    for page in pages:
        y = 800.0
        for line in page.splitlines():
            pdf.drawString(40, y, line)
            y -= 14
            if y < 40:
                break
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_filled_form_pdf(fields: dict[str, str]) -> bytes:
    """A one-page PDF form: a label drawn for each field (name -> value), and the field
    filled in, as a viewer saves it (an AcroForm widget with its appearance)."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    y = 800.0
    for name, value in fields.items():
        pdf.drawString(40, y, f"{name}:")
        pdf.acroForm.textfield(name=name, value=value, x=180, y=y - 6, width=250, height=20)
        y -= 40
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_form_without_appearances_pdf(fields: dict[str, str]) -> bytes:
    """A one-page PDF form: a label drawn for each field (name -> value), and the field filled
    in with no appearance of its own, the form asking the viewer to draw its value
    (/NeedAppearances), as many form tools save one."""
    labels, widgets = [], []
    for number, (name, value) in enumerate(fields.items()):
        y = 700 - 40 * number
        labels.append(b"BT /F1 12 Tf 40 %d Td (%b:) Tj ET" % (y, name.encode()))
        widgets.append(
            b"<< /Type /Annot /Subtype /Widget /FT /Tx /T (%b) /V (%b) /Rect [180 %d 430 %d] "
            b"/P 5 0 R /DA (/Helv 12 Tf 0 g) >>" % (name.encode(), value.encode(), y - 6, y + 14)
        )
    content = b"\n".join(labels)
    fields_list = b" ".join(b"%d 0 R" % (6 + number) for number in range(len(fields)))
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R /AcroForm << /Fields [%b] /NeedAppearances true "
            b"/DA (/Helv 12 Tf 0 g) /DR << /Font << /Helv 4 0 R >> >> >> >>" % fields_list,
            b"<< /Type /Pages /Kids [5 0 R] /Count 1 >>",
            b"<< /Length %d >>\nstream\n%b\nendstream" % (len(content), content),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
            b"/Resources << /Font << /F1 4 0 R >> >> /Annots [%b] >>" % fields_list,
            *widgets,
        ]
    )


def make_image_only_pdf() -> bytes:
    """A valid PDF whose only page has a drawing and no text at all."""
    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4)
    pdf.rect(100, 100, 200, 200, fill=1)
    pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def make_encrypted_pdf(text: str = "secret page", password: str = "hunter2") -> bytes:
    reader = pypdf.PdfReader(io.BytesIO(make_pdf([text])))
    writer = pypdf.PdfWriter()
    for page in reader.pages:
        writer.add_page(page)
    writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    """A DOCX with the paragraphs, then (optionally) a table of the given rows."""
    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_strict_docx(paragraphs: list[str]) -> bytes:
    """A DOCX as Word saves a "Strict Open XML Document" (ISO 29500 Strict): the same package
    under the Strict namespaces, which python-docx does not read."""
    source = zipfile.ZipFile(io.BytesIO(make_docx(paragraphs)))
    strict = {
        b"http://schemas.openxmlformats.org/officeDocument/2006/relationships": (
            b"http://purl.oclc.org/ooxml/officeDocument/relationships"
        ),
        b"http://schemas.openxmlformats.org/wordprocessingml/2006/main": (
            b"http://purl.oclc.org/ooxml/wordprocessingml/main"
        ),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            content = source.read(member.filename)
            for transitional, iso in strict.items():
                content = content.replace(transitional, iso)
            archive.writestr(member.filename, content)
    return out.getvalue()


def lorem(sentences: int, seed: int = 0) -> str:
    """Deterministic prose with sentence and paragraph boundaries."""
    words = [
        "ingestion",
        "vector",
        "search",
        "document",
        "agent",
        "chunk",
        "embedding",
        "worker",
        "retry",
        "durable",
        "temporal",
        "postgres",
        "page",
        "table",
        "paragraph",
        "sentence",
        "boundary",
        "overlap",
        "offset",
    ]
    out = []
    for index in range(sentences):
        n = 6 + (index * 7 + seed) % 9
        sentence = " ".join(words[(index * 3 + k + seed) % len(words)] for k in range(n))
        out.append(sentence.capitalize() + ".")
        if index % 5 == 4:
            out.append("\n\n")
    return " ".join(out).replace(" \n\n ", "\n\n")


def make_docx_blocks(blocks: list[str | list[list[str]]]) -> bytes:
    """A DOCX with paragraphs (strings) and tables (lists of rows) in the given order."""
    document = docx.Document()
    for block in blocks:
        if isinstance(block, str):
            document.add_paragraph(block)
            continue
        grid = document.add_table(rows=len(block), cols=len(block[0]))
        for r, row in enumerate(block):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_docx_with_unreadable_rels(damage: str) -> bytes:
    """A DOCX whose `_rels/.rels` zipfile cannot read back: `encrypted` (its encryption flag
    set, as a password-protected ZIP), `method` (a compression method zipfile lacks, 99 is
    WinZip's AES) or `deflate` (its compressed stream damaged, as by a bad download)."""
    data = bytearray(make_docx(["Hello"]))
    name = b"_rels/.rels"
    local = data.find(b"PK\x03\x04")
    while data[local + 30 : local + 30 + len(name)] != name:
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(name)] != name:
        central = data.find(b"PK\x01\x02", central + 4)
    if damage == "encrypted":
        data[local + 6] |= 1
        data[central + 8] |= 1
    elif damage == "method":
        aes = (99).to_bytes(2, "little")
        data[local + 8 : local + 10] = data[central + 10 : central + 12] = aes
    else:
        start = local + 30 + len(name) + int.from_bytes(data[local + 28 : local + 30], "little")
        for at in range(start + 2, start + 22):
            data[at] ^= 0x5A
    return bytes(data)


def make_zip(members: dict[str, bytes]) -> bytes:
    """A plain ZIP archive holding the given files (name -> content), deflated."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def build_pdf(objects: list[bytes]) -> bytes:
    """A PDF from raw object bodies (object n is objects[n - 1]) with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%b\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % offset for offset in offsets))
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(objects) + 1))
    out.write(b"startxref\n%d\n%%%%EOF\n" % xref)
    return out.getvalue()


def make_unmapped_font_pdf(
    pages: list[str], first_code: int = 1, to_unicode: Callable[[str, int], int] | None = None
) -> bytes:
    """Pages drawn in a Type3 font of boxes named /g1, /g2, ..., coded in the order of their
    letters from `first_code`, with no ToUnicode map (as some older generators wrote them):
    no reader knows which letters they are. Or with a ToUnicode map that reads each (letter,
    code) as `to_unicode` says."""
    alphabet = sorted(set("".join(pages)))
    codes = {letter: first_code + number for number, letter in enumerate(alphabet)}
    glyphs = 6 + 2 * len(pages)  # objects 1-5: catalog, page tree, font, its glyphs, ToUnicode
    mapped = b"" if to_unicode is None else b"/ToUnicode 5 0 R"
    read_as = to_unicode or (lambda letter, code: code)
    cmap = b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap /CMapName /G def "
    cmap += b"1 begincodespacerange <00> <FF> endcodespacerange %d beginbfchar " % len(codes)
    cmap += b" ".join(b"<%02X> <%04X>" % (c, read_as(letter, c)) for letter, c in codes.items())
    cmap += b" endbfchar endcmap CMapName currentdict /CMap defineresource pop end end"
    names = b" ".join(b"/g%d" % number for number in range(1, len(alphabet) + 1))
    last_code = first_code + len(alphabet) - 1
    widths = b" ".join(b"600" for _ in alphabet)
    procs = b" ".join(b"/g%d %d 0 R" % (n + 1, glyphs + n) for n in range(len(alphabet)))
    kids = b" ".join(b"%d 0 R" % (6 + 2 * n) for n in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%b] /Count %d >>" % (kids, len(pages)),
        b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 600 700] "
        b"/FontMatrix [0.001 0 0 0.001 0 0] /CharProcs 4 0 R "
        b"/Encoding << /Type /Encoding /Differences [%d %b] >> /FirstChar %d /LastChar %d "
        b"/Widths [%b] %b >>" % (first_code, names, first_code, last_code, widths, mapped),
        b"<< %b >>" % procs,
        b"<< /Length %d >>\nstream\n%b\nendstream" % (len(cmap), cmap),
    ]
    for page in pages:
        shown = bytes(codes[letter] for letter in page).hex().encode()
        content = b"BT /F1 12 Tf 40 700 Td <%b> Tj ET" % shown
        objects += [
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (len(objects) + 2),
            b"<< /Length %d >>\nstream\n%b\nendstream" % (len(content), content),
        ]
    for letter in alphabet:
        glyph = b"600 0 0 0 0 0 d1" if letter == " " else b"600 0 0 0 500 600 d1 50 0 400 600 re f"
        objects.append(b"<< /Length %d >>\nstream\n%b\nendstream" % (len(glyph), glyph))
    return build_pdf(objects)


def make_glyph_numbered_font_pdf(pages: list[str]) -> bytes:
    """Pages drawn in a Type0 font coded by glyph number ("Identity-H"), with no ToUnicode
    map, as a PDF printer writes a subset of a TrueType font: each letter coded as its glyph's
    number in the font (here the letter's code less 29, as in many fonts' glyph order), which
    PDFium reads as the letter of that code: "The" reads "7KH"."""
    kids = b" ".join(b"%d 0 R" % (5 + 2 * n) for n in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%b] /Count %d >>" % (kids, len(pages)),
        b"<< /Type /Font /Subtype /Type0 /BaseFont /ABCDEF+Arial /Encoding /Identity-H "
        b"/DescendantFonts [4 0 R] >>",
        b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /ABCDEF+Arial /CIDSystemInfo "
        b"<< /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /DW 600 >>",
    ]
    for page in pages:
        lines = b" T* ".join(
            b"<%b> Tj" % b"".join(b"%04X" % max(ord(letter) - 29, 0) for letter in line)
            for line in page.splitlines()
        )
        content = b"BT /F1 12 Tf 14 TL 40 700 Td %b ET" % lines
        objects += [
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (len(objects) + 2),
            b"<< /Length %d >>\nstream\n%b\nendstream" % (len(content), content),
        ]
    return build_pdf(objects)


def make_slow_pdf(operators_mib: float, pages: int) -> bytes:
    """A PDF of a few KiB whose pages all run one shared, compressed content stream of
    `operators_mib` MiB of `q Q` operators (save and restore the graphics state): PDFium needs
    30-60 ms per MiB for it on the benchmark machine, page after page, without holding more
    memory meanwhile. Every page says "ab"."""
    operators = b"q Q " * int(operators_mib * 1024 * 1024 / 4)
    return pdf_of_content(b"BT /F1 12 Tf 10 10 Td (ab) Tj ET " + operators, pages)


def make_memory_hungry_pdf(operators_mib: float) -> bytes:
    """A one-page PDF of a few KiB whose content is `operators_mib` MiB of text operators
    (`(ab) Tj 1 0 Td`): PDFium builds an object for each, ~20 bytes per byte of the stream
    (16 MiB of operators took ~320 MiB here), at 0.1 s per MiB or less."""
    operators = b"(ab) Tj 1 0 Td " * int(operators_mib * 1024 * 1024 / 15)
    return pdf_of_content(b"BT /F1 12 Tf 10 10 Td " + operators + b"ET")


def pdf_of_content(
    content: bytes, pages: int = 1, media_box: bytes = b"[0 0 612 792]", rotate: int = 0
) -> bytes:
    """A PDF whose pages all draw one shared, compressed content stream, with Helvetica as /F1,
    shown turned clockwise by `rotate` degrees (/Rotate)."""
    stream = zlib.compress(content, 9)
    kids = b" ".join(b"%d 0 R" % (5 + page) for page in range(pages))
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox %b /Rotate %d /Contents 3 0 R "
        b"/Resources << /Font << /F1 4 0 R >> >> >>" % (media_box, rotate)
    )
    return build_pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [%b] /Count %d >>" % (kids, pages),
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%b\nendstream" % (len(stream), stream),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            *[page] * pages,
        ]
    )


def make_linked_pdf(pages: int, content_mib: float) -> bytes:
    """A PDF whose pages each say "ab" and link to a web site (a Link annotation), with a
    content stream of their own padded by a comment to `content_mib` MiB (a few KiB
    compressed): the content of a page of drawings, which PDFium reads page after page."""
    padding = b"%" + b"x" * int(content_mib * 1024 * 1024) + b"\n"
    stream = zlib.compress(b"BT /F1 12 Tf 10 10 Td (ab) Tj ET\n" + padding, 9)
    first = 4  # objects 1-3: the catalog, the page tree and the font
    kids = b" ".join(b"%d 0 R" % (first + 3 * page) for page in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%b] /Count %d >>" % (kids, pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for page in range(pages):
        content, link = first + 3 * page + 1, first + 3 * page + 2
        objects += [
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> /Annots [%d 0 R] >>" % (content, link),
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n%b\nendstream" % (len(stream), stream),
            b"<< /Type /Annot /Subtype /Link /Rect [10 10 60 30] /Border [0 0 0] "
            b"/A << /S /URI /URI (https://example.com/) >> >>",
        ]
    return build_pdf(objects)


def docx_with_related_parts(
    document_xml: bytes, parts: list[tuple[str, str, str, str, bytes]]
) -> bytes:
    """A real DOCX with `document_xml` as its body and more parts, each `(relationship id,
    relationship type, target, content type, content)`: stored as word/`target`, related from
    the document and given its content type, as Word and document generators write them."""
    source = zipfile.ZipFile(io.BytesIO(docx_with_body(document_xml)))
    relationships = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    overrides = "".join(
        f'<Override PartName="/word/{target}" ContentType="{content_type}"/>'
        for _, _, target, content_type, _ in parts
    )
    related = "".join(
        f'<Relationship Id="{rel_id}" Type="{relationships}/{kind}" Target="{target}"/>'
        for rel_id, kind, target, _, _ in parts
    )
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            content = source.read(member.filename)
            if member.filename == "[Content_Types].xml":
                content = content.replace(b"</Types>", f"{overrides}</Types>".encode())
            elif member.filename == "word/_rels/document.xml.rels":
                content = content.replace(
                    b"</Relationships>", f"{related}</Relationships>".encode()
                )
            archive.writestr(member.filename, content)
        for _, _, target, _, data in parts:
            archive.writestr(f"word/{target}", data)
    return out.getvalue()


def docx_with_notes(document_xml: bytes, footnotes_xml: bytes, endnotes_xml: bytes) -> bytes:
    """A real DOCX with `document_xml` as its body and footnote and endnote parts."""
    word = "application/vnd.openxmlformats-officedocument.wordprocessingml"
    return docx_with_related_parts(
        document_xml,
        [
            ("rIdNotes1", "footnotes", "footnotes.xml", f"{word}.footnotes+xml", footnotes_xml),
            ("rIdNotes2", "endnotes", "endnotes.xml", f"{word}.endnotes+xml", endnotes_xml),
        ],
    )


def docx_with_imported_chunk(
    document_xml: bytes, target: str, content_type: str, content: bytes
) -> bytes:
    """A real DOCX with `document_xml` as its body, whose `<w:altChunk r:id="rIdChunk1"/>`
    imports `content` (an HTML page, a web archive, text or a whole .docx) from the part
    word/`target`, as document generators and merges write them."""
    return docx_with_related_parts(
        document_xml, [("rIdChunk1", "aFChunk", target, content_type, content)]
    )


def docx_with_body(document_xml: bytes, parts: dict[str, bytes] | None = None) -> bytes:
    """A real DOCX whose word/document.xml is replaced by `document_xml`, and the other parts
    named in `parts` ("word/numbering.xml", "word/styles.xml") by theirs."""
    replaced = {**(parts or {}), "word/document.xml": document_xml}
    source = zipfile.ZipFile(io.BytesIO(make_docx(["placeholder"])))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in source.infolist():
            content = replaced.get(member.filename, source.read(member.filename))
            archive.writestr(member.filename, content)
    return out.getvalue()


def make_compound_file(streams: dict[str, bytes]) -> bytes:
    """An OLE2 compound file (version 3, 512-byte sectors) holding `streams`, each padded to
    4 KiB so that none goes to the mini stream: the container of a Word 97-2003 .doc
    (`WordDocument`) and of an Office document saved with a password (`EncryptionInfo`,
    `EncryptedPackage`)."""
    end, fat_mark, free = 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
    sectors: list[bytes] = []
    fat: list[int] = []

    def add(data: bytes) -> int:
        first = len(sectors)
        count = len(data) // 512
        for index in range(count):
            sectors.append(data[index * 512 : (index + 1) * 512])
            fat.append(first + index + 1 if index < count - 1 else end)
        return first

    def entry(name: str, kind: int, start: int, size: int, child: int, right: int) -> bytes:
        encoded = (name + "\x00").encode("utf-16-le").ljust(64, b"\x00")
        return (
            encoded
            + struct.pack("<HBBIII", len(name) * 2 + 2, kind, 1, free, right, child)
            + bytes(36)
            + struct.pack("<IQ", start, size)
        )

    entries = [entry("Root Entry", 5, end, 0, child=1, right=free)]
    for number, (name, data) in enumerate(streams.items(), start=1):
        start = add(data.ljust(4096, b"\x00"))
        right = number + 1 if number < len(streams) else free
        entries.append(entry(name, 2, start, 4096, child=free, right=right))
    directory = add(b"".join(entries).ljust(-(-len(entries) * 128 // 512) * 512, b"\x00"))
    fat_sector = len(sectors)
    fat.append(fat_mark)
    sectors.append(b"".join(struct.pack("<I", value) for value in fat).ljust(512, b"\xff"))
    header = (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
        + bytes(16)
        + struct.pack("<HHHHH", 0x3E, 3, 0xFFFE, 9, 6)
        + bytes(6)
        + struct.pack("<9I", 0, 1, directory, 0, 4096, end, 0, end, 0)
        + struct.pack("<I", fat_sector)
        + b"\xff" * 4 * 108
    )
    return header + b"".join(sectors)


def make_password_protected_docx() -> bytes:
    """A .docx saved by Word with a password: the package, encrypted, inside an OLE2 file."""
    info = struct.pack("<HHI", 4, 4, 0x40) + b'<?xml version="1.0"?><encryption/>'
    package = struct.pack("<Q", 2048) + bytes(range(256)) * 8
    return make_compound_file({"EncryptionInfo": info, "EncryptedPackage": package})


def make_legacy_doc() -> bytes:
    """A Word 97-2003 document (.doc): its streams in an OLE2 file."""
    return make_compound_file({"WordDocument": b"\xec\xa5" + bytes(510), "1Table": bytes(512)})
