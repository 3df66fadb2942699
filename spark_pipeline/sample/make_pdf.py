"""Regenerate the sample's PDF datasheet from its Markdown source (needs ``fpdf2``).

    python -m spark_pipeline.sample.make_pdf

The PDF is shipped in ``datasheets/``; run this only after editing the Markdown. It writes
an outline (bookmarks) for every heading, as vendor datasheets have.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def markdown_to_pdf(source: Path, target: Path, title: str) -> None:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(__import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC))
    pdf.set_title(title)
    pdf.set_author("Spark pipeline sample")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    for block in source.read_text(encoding="utf-8").split("\n\n"):
        block = block.strip()
        if not block:
            continue
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            heading = block.lstrip("#").strip()
            if level == 1 and pdf.get_y() > 60:
                pdf.add_page()
            pdf.start_section(heading, level=level - 1)
            pdf.set_font("Helvetica", "B", 14 if level == 1 else 12)
            pdf.multi_cell(0, 8, heading, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(1)
        elif block.startswith("|"):
            pdf.set_font("Courier", "", 9)
            for row in block.splitlines():
                cells = [c.strip() for c in row.strip("|").split("|")]
                pdf.multi_cell(0, 5, "  ".join(f"{c:<14}" for c in cells), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        else:
            pdf.set_font("Helvetica", "", 10)
            pdf.multi_cell(0, 5, " ".join(block.split()), new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
    pdf.output(str(target))


if __name__ == "__main__":
    markdown_to_pdf(HERE / "skm6_register_map.source.md", HERE / "datasheets" / "skm6_register_map.pdf",
                    "SKM-6 Six-Axis Motion Sensor - Register Map and Descriptions, Rev 1.2")
    print("wrote", HERE / "datasheets" / "skm6_register_map.pdf")
