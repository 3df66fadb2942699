from pathlib import Path

import pypdf
import pytest

from spark_pipeline.settings import SAMPLE_DIR
from spark_pipeline.specmap.datasheet import (
    DatasheetError,
    read_datasheet,
    read_markdown,
    read_text,
    sectioning_warnings,
)

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
    assert [s.id for s in sections][:5] == ["front", "1", "2", "3", "3.1"]
    assert "SKM-6" in sections[0].text  # the title page, before the first bookmark
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


def _register_map_pdf(path: Path) -> Path:
    """A register map laid out as vendors do (no outline): a running header and footer on
    every page, a table of contents, bold numbered headings, and register tables in a small
    font whose rows start with numbers ("5 ACCEL_XOUT_L[0]")."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(False)

    def page(n: int) -> None:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 10)
        pdf.set_xy(10, 8)
        pdf.cell(0, 5, "XQ-9000 Register Map and Descriptions")
        pdf.set_font("Helvetica", "", 10)
        pdf.set_xy(10, 285)
        pdf.cell(0, 5, f"{n} of 3")
        pdf.set_xy(10, 25)

    def heading(text: str) -> None:
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")

    def body(text: str) -> None:
        pdf.set_font("Helvetica", "", 10)
        pdf.multi_cell(0, 5, text, new_x="LMARGIN", new_y="NEXT")

    def table(rows: list[str]) -> None:
        pdf.set_font("Helvetica", "", 7)
        for row in rows:
            pdf.multi_cell(0, 4, row, new_x="LMARGIN", new_y="NEXT")

    page(1)
    heading("CONTENTS")
    body("1 OVERVIEW .................................................... 1\n"
         "2 REGISTER DESCRIPTIONS ....................................... 2\n"
         "2.1 REGISTER 26 - CONFIGURATION ................................ 2\n"
         "2.2 REGISTER 27 - GYROSCOPE CONFIGURATION ...................... 3\n"
         "2.3 REGISTER 28 - ACCELEROMETER CONFIGURATION .................. 3")
    heading("1 Overview")
    body("The XQ-9000 is a six-axis motion sensor with a gyroscope and an accelerometer.")
    page(2)
    heading("2 Register Descriptions")
    body("This section describes each register.")
    heading("2.1 Register 26 - Configuration")
    body("CONFIG configures the frame synchronisation pin and the low pass filter.")
    table(["EXT_SYNC_SET FSYNC bit location", "0 Input disabled", "1 TEMP_OUT_L[0]",
           "5 ACCEL_XOUT_L[0]", "6 GYRO_XOUT_L[0]", "7 ACCEL_ZOUT_L[0]"])
    body("DLPF_CFG selects the filter bandwidth.")
    page(3)
    heading("2.2 Register 27 - Gyroscope Configuration")
    body("GYRO_CONFIG selects the full scale range of the gyroscope outputs.")
    heading("2.3 Register 28 - Accelerometer Configuration")
    body("ACCEL_CONFIG selects the full scale range of the accelerometer outputs.")
    pdf.output(str(path))
    return path


def test_pdf_headings_told_from_table_rows_by_layout(tmp_path):
    """Table rows that start with a number ("5 ACCEL_XOUT_L[0]", 7 pt) are text, not
    headings; the bold 10 pt numbered lines are. (Numbers alone accepted the row as section
    5 and then rejected 2.2 and 2.3 as going backwards.)"""
    sections = read_datasheet(_register_map_pdf(tmp_path / "regmap.pdf"))
    assert [s.id for s in sections] == ["front", "1", "2", "2.1", "2.2", "2.3"]
    by_id = {s.id: s for s in sections}
    assert by_id["2.1"].title == "Register 26 - Configuration" and by_id["2.1"].parent_id == "2"
    assert "5 ACCEL_XOUT_L[0]" in by_id["2.1"].text and "DLPF_CFG" in by_id["2.1"].text
    assert "GYRO_CONFIG selects" in by_id["2.2"].text and "ACCEL_CONFIG" not in by_id["2.2"].text
    text = "\n".join(s.text for s in sections)
    assert "Register Map and Descriptions" not in text, "running header dropped"
    assert " of 3" not in text, "page footer dropped"
    assert "......" not in text, "contents entries dropped"
    assert sectioning_warnings(sections) == []


def _outline_pdf(path: Path) -> Path:
    """Three sections on one page whose bookmarks are not worded like the printed headings."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    for bookmark, heading, body in (
        ("Clock control", "5.1 RCC block", "The RCC block gates the peripheral clocks."),
        ("Power control", "5.2 PWR block", "The PWR block sets the voltage scaling."),
        ("Watchdog", "5.3 IWDG", "The IWDG resets a stuck program."),
    ):
        pdf.start_section(bookmark, level=0)
        pdf.set_font("Helvetica", "B", 12)
        pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)
        pdf.multi_cell(0, 5, body, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(4)
    pdf.output(str(path))
    return path


def test_outline_sections_are_cut_where_their_bookmarks_point(tmp_path):
    """Each section gets the text below its own bookmark on the page, even when the bookmark's
    title is not what the page prints (a title search found nothing, left the first sections
    empty and gave all the text to the last one)."""
    sections = read_datasheet(_outline_pdf(tmp_path / "outline.pdf"))
    texts = {s.title: s.text for s in sections}
    assert list(texts) == ["Clock control", "Power control", "Watchdog"]
    assert "gates the peripheral clocks" in texts["Clock control"]
    assert "voltage scaling" in texts["Power control"] and "clocks" not in texts["Power control"]
    assert "stuck program" in texts["Watchdog"] and "voltage" not in texts["Watchdog"]
    assert all(s.page_start == s.page_end == 1 for s in sections)


def test_a_pdf_without_recognisable_headings_is_reported(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", "", 10)
    for word in ("alpha", "beta", "gamma"):
        pdf.add_page()
        pdf.multi_cell(0, 5, " ".join([f"The {word} device samples its inputs and stores them."] * 45))
    path = tmp_path / "flat.pdf"
    pdf.output(str(path))
    sections = read_datasheet(path)
    warnings = sectioning_warnings(sections)
    assert len(warnings) == 1 and "flat.pdf" in warnings[0] and "no headings were recognised" in warnings[0]


def test_sectioning_warnings_name_a_giant_section_and_empty_ones():
    from spark_pipeline.specmap.sections import Section

    giant = [Section("front", "Front matter", 1, "x" * 100)] + [
        Section(f"4.{i}", f"Register {i}", 2, f"Register {i}\nbody of register {i} " * 3) for i in range(1, 6)]
    giant[3].text = "y" * 20_000
    warnings = sectioning_warnings(giant)
    assert any("section 4.3" in w and "headings inside it were probably missed" in w for w in warnings)
    empty = [Section(f"1.{i}", f"Part {i}", 2, f"Part {i}") for i in range(1, 6)] + [
        Section("2", "Body", 1, "text " * 2000)]
    assert any("have no text of their own" in w for w in sectioning_warnings(empty))


def test_an_oversized_text_datasheet_is_refused_with_a_true_message(tmp_path, monkeypatch):
    """A huge one-line Markdown file is refused before it is read (it took 2 GB and failed with
    "scanned images"); a section over the limit is cut and said so."""
    from spark_pipeline.specmap import datasheet

    monkeypatch.setattr(datasheet, "MAX_TEXT_BYTES", 10_000)
    huge = tmp_path / "huge.md"
    huge.write_text("# 1 Registers\n" + "x" * 20_000)
    with pytest.raises(DatasheetError, match=r"huge\.md: 20,014 bytes, over the 10,000-byte limit"):
        read_datasheet(huge)
    monkeypatch.setattr(datasheet, "MAX_TEXT_BYTES", 1_000_000)
    monkeypatch.setattr(datasheet, "MAX_SECTION_CHARS", 5_000)
    sections = read_datasheet(huge)
    assert len(sections[0].text) == 5_000 and sections[0].cut == 20_000
    assert any("cut to 5,000" in w for w in sectioning_warnings(sections))
    empty = tmp_path / "empty2.md"
    empty.write_text("\n\n")
    with pytest.raises(DatasheetError, match="no readable text") as err:
        read_datasheet(empty)
    assert "scanned" not in str(err.value)
