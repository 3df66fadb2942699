from pathlib import Path

import pypdf
import pytest

from spark_pipeline.settings import SAMPLE_DIR
from spark_pipeline.specmap.datasheet import DatasheetError, read_datasheet, read_markdown, read_text

SAMPLE_PDF = SAMPLE_DIR / "datasheets" / "skm6_register_map.pdf"


def _pdf_without_outline(path: Path, blocks: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for block in blocks:
        pdf.multi_cell(0, 6, block, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))
    return path


def test_pdf_sections_come_from_the_outline():
    sections = read_datasheet(SAMPLE_PDF)
    by_id = {s.id: s for s in sections}
    assert [s.id for s in sections][:4] == ["1", "2", "3", "3.1"]
    pwr = by_id["3.8"]
    assert pwr.title.startswith("PWR_MGMT_1") and pwr.level == 2 and pwr.parent_id == "3"
    assert "DEVICE_RESET" in pwr.text and "CLKSEL" in pwr.text
    # text is cut at the next heading, not at a mention of its words in running text
    assert "slave address" not in by_id["1"].text and "slave address" in by_id["2"].text
    assert "WHO_AM_I - Device Identity" not in pwr.text
    assert all(s.page_start and s.page_end >= s.page_start for s in sections)


def test_pdf_without_outline_uses_numbered_headings(tmp_path):
    path = _pdf_without_outline(tmp_path / "plain.pdf", [
        "Contents", "1 Overview ........ 1", "2 Registers ........ 1",
        "1 Overview", "The XQ9 is a small timer.",
        "2 Registers", "The timer has two registers.",
        "2.1 CTRL register", "Bit EN starts the counter.",
        "2.2 LOAD register", "Reload value.",
    ])
    sections = read_datasheet(path)
    ids = [s.id for s in sections]
    assert ids == ["front", "1", "2", "2.1", "2.2"]
    by_id = {s.id: s for s in sections}
    assert by_id["2.1"].title == "CTRL register" and by_id["2.1"].parent_id == "2"
    assert "EN starts" in by_id["2.1"].text


def test_encrypted_pdf_gives_a_clear_error(tmp_path):
    writer = pypdf.PdfWriter(clone_from=str(SAMPLE_PDF))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="AES-128")
    locked = tmp_path / "locked.pdf"
    writer.write(str(locked))
    with pytest.raises(DatasheetError, match=r"locked\.pdf.*encrypted"):
        read_datasheet(locked)


def test_owner_only_encryption_still_reads(tmp_path):
    writer = pypdf.PdfWriter(clone_from=str(SAMPLE_PDF))
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    path = tmp_path / "owner.pdf"
    writer.write(str(path))
    assert any("PWR_MGMT_1" in s.text for s in read_datasheet(path))


@pytest.mark.parametrize("content", [b"", b"not a pdf at all", SAMPLE_PDF.read_bytes()[:2000]])
def test_corrupt_pdf_gives_a_clear_error(tmp_path, content):
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    with pytest.raises(DatasheetError, match=r"broken\.pdf"):
        read_datasheet(path)


def test_markdown_sections():
    text = "# Part\nintro\n## 1 Setup\nset it up\n```\n# not a heading\n```\n## 2 Use\nuse it\n"
    sections = read_markdown(text, "x.md")
    assert [(s.id, s.level, s.parent_id) for s in sections] == [("part", 1, None), ("1", 2, "part"), ("2", 2, "part")]
    assert "# not a heading" in sections[1].text


def test_text_headings_skip_contents_and_backwards_numbers():
    text = ("1 Intro ..... 3\n2 Body ..... 4\n1 Intro\nhello\n2 Body\nworld\n"
            "1 Intro is mentioned again\n2.1 Detail\nmore\n")
    ids = [s.id for s in read_text(text)]
    assert ids == ["front", "1", "2", "2.1"]


def test_svd_sections_per_peripheral_and_register():
    sections = read_datasheet(SAMPLE_DIR / "datasheets" / "spk32f4.svd")
    by_id = {s.id: s for s in sections}
    cr1 = by_id["USART1.CR1"]
    assert cr1.parent_id == "USART1" and cr1.level == 2
    assert "UE bit 13" in cr1.text and "Control register 1" in cr1.text
    assert {"USART1_CR1", "CR1", "UE", "TE"} <= set(cr1.names)
    # a derived peripheral gets its own section, pointing at its base, without duplicate registers
    assert "Same register layout as GPIOA" in by_id["GPIOB"].text
    assert "GPIOB.MODER" not in by_id
    assert "MODER" in by_id["GPIOB"].names


def test_non_svd_xml_and_unknown_types(tmp_path):
    xml = tmp_path / "other.xml"
    xml.write_text("<html><body/></html>")
    with pytest.raises(DatasheetError, match="not a CMSIS-SVD file"):
        read_datasheet(xml)
    broken = tmp_path / "broken.svd"
    broken.write_text("<device><peripherals>")
    with pytest.raises(DatasheetError, match="not well-formed"):
        read_datasheet(broken)
    with pytest.raises(DatasheetError, match="unknown datasheet type"):
        read_datasheet(tmp_path / "x.docx")


def test_empty_text_datasheet(tmp_path):
    empty = tmp_path / "empty.md"
    empty.write_text("   \n")
    with pytest.raises(DatasheetError, match="no readable text"):
        read_datasheet(empty)


def test_pdf_reading_is_page_by_page(monkeypatch):
    """Sections are yielded while pages are still being read (a 150-page datasheet streams)."""
    from spark_pipeline.specmap import datasheet

    pages_read = []
    original = datasheet._page_texts

    def spy(reader, path):
        for index, text in original(reader, path):
            pages_read.append(index)
            yield index, text

    monkeypatch.setattr(datasheet, "_page_texts", spy)
    stream = datasheet.read_pdf(SAMPLE_PDF)
    first = next(stream)
    assert first.id == "1"
    total = len(pypdf.PdfReader(str(SAMPLE_PDF)).pages)
    assert len(pages_read) < total, "the first section arrived before the whole PDF was read"
    rest = list(stream)
    assert len(pages_read) == total and rest
