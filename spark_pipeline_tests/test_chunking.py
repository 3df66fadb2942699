import pytest

from spark_pipeline.corpus.chunking import chunk_mapping, chunk_section, split_mapping
from spark_pipeline.corpus.settings import ChunkingSettings, CorpusSettings

SEP = "=" * 82
SETTINGS = CorpusSettings.load("hero").chunking  # the paper's 7,500 / 50


def _func(name: str, body_lines: int) -> str:
    body = "".join(f"    x += {i}; /* step {i} of {name} */\n" for i in range(body_lines))
    return f"int {name}(int x)\n{{\n{body}    return x;\n}}\n"


def _mapping(*sections: str) -> bytes:
    return "".join(f"{SEP}\n{s}\n" for s in sections).encode()


def test_paper_values_are_the_defaults():
    assert (SETTINGS.max_chars, SETTINGS.min_chars, SETTINGS.workers) == (7500, 50, 16)


def test_small_section_is_one_chunk():
    text = "Section 1: Intro\nStatus: partial\n\nSome text.\n\n// File: a.c\nint a(void) { return 1; }\n"
    chunks, rejections = chunk_mapping(_mapping(text), "m", SETTINGS, workers=1)
    assert len(chunks) == 1 and not rejections
    assert chunks[0].boundary == "section" and chunks[0].source_files == ["a.c"]
    assert chunks[0].section_id == "1"


def test_large_section_splits_at_file_markers_first():
    files = [f"// File: src/f{i}.c\n" + _func(f"f{i}", 60) for i in range(4)]  # ~3 kB each
    text = "Section 2: Big\n\nprose\n\n" + "".join(files)
    chunks, _ = chunk_section("2", text, 7500)
    assert len(chunks) >= 2 and all(len(c.text) <= 7500 for c in chunks)
    assert {c.boundary for c in chunks} == {"file"}
    assert all(c.text.startswith("// File:") for c in chunks[1:])
    assert [f for c in chunks for f in c.source_files] == [f"src/f{i}.c" for i in range(4)]
    assert "".join(c.text for c in chunks) == text, "nothing is lost"


def test_oversized_file_splits_at_function_ends_not_at_braces_in_strings():
    tricky = 'int g(void)\n{\n    const char *s = "}\\n}";\n    char c = \'}\';\n    /* } */\n    // }\n    return 0;\n}\n'
    text = "// File: big.c\n" + tricky + "".join(_func(f"f{i}", 70) for i in range(5))
    chunks, _ = chunk_section("3", text, 7500)
    assert len(chunks) >= 2 and {c.boundary for c in chunks} == {"function"}
    for c in chunks:
        assert c.text.rstrip().endswith("}"), "each chunk ends where a top-level block closes"
        assert c.source_files == ["big.c"]
    assert "".join(c.text for c in chunks) == text
    assert tricky in chunks[0].text, "the string and comment braces did not cut g()"


def test_oversized_function_splits_at_statements_and_never_inside_a_line():
    text = "// File: huge.c\n" + _func("huge", 400)  # one ~15 kB function
    chunks, _ = chunk_section("4", text, 7500)
    assert len(chunks) >= 2 and {c.boundary for c in chunks} == {"statement"}
    original_lines = set(text.splitlines())
    for c in chunks:
        assert c.text.endswith("\n")
        assert set(c.text.splitlines()) <= original_lines
    assert "".join(c.text for c in chunks) == text


def test_blank_lines_are_statement_boundaries_for_prose():
    para = ("word " * 300).strip()
    text = "\n\n".join([para] * 6)  # ~9 kB of prose, no code
    chunks, _ = chunk_section("5", text, 7500)
    assert len(chunks) == 2 and all(len(c.text) <= 7500 for c in chunks)


def test_a_100mb_single_line_is_rejected_by_name_and_the_rest_kept():
    huge = "x" * (100 * 1024 * 1024)
    around = "".join(f"int helper_{i}(void);  /* declared before and after the blob */\n" for i in range(3))
    text = "Section 6: Blob\n\nintro line\n// File: gen.c\n" + around + huge + "\n" + around.replace("helper", "after")
    chunks, rejections = chunk_mapping(_mapping(text, "Section 7: Next\n\n" + "fine text " * 10), "pair/mapping.txt",
                                       SETTINGS, workers=1)
    assert [r.reason for r in rejections] == ["line_too_long"]
    assert "pair/mapping.txt: section 6 has a 104,857,600-character line" in rejections[0].message
    assert all(len(c.text) <= 7500 for c in chunks)
    assert any("int after_2(void);" in c.text for c in chunks) and any("helper_0" in c.text for c in chunks)
    assert any(c.section_id == "7" for c in chunks)


def test_bad_inputs_give_reasons_and_do_not_stop_other_sections():
    good = "Section 1: Good\n\n" + "useful text " * 10
    bad_utf8 = b"Section 2: Bad\n\nvalue \xff\xfe here\n"
    data = f"{SEP}\n{good}\n{SEP}\n".encode() + bad_utf8 + f"{SEP}\n   \n\n{SEP}\nSection 4: Tiny\n\nx\n".encode()
    chunks, rejections = chunk_mapping(data, "m", SETTINGS, workers=1)
    assert [c.section_id for c in chunks] == ["1"]
    reasons = {r.reason: r for r in rejections}
    assert set(reasons) == {"invalid_utf8", "empty_section", "too_short"}
    assert "\\xff" in reasons["invalid_utf8"].text, "the bad section's text is kept, escaped"
    assert "Tiny" in reasons["too_short"].text
    no_sections, rej = split_mapping(b"just some text without separators\n", "plain.txt")
    assert no_sections == [] and rej[0].reason == "no_sections" and "plain.txt" in rej[0].message


@pytest.mark.parametrize("workers", [2])
def test_parallel_chunking_matches_serial(workers):
    sections = [f"Section {i}: S\n\n// File: f{i}.c\n" + _func(f"f{i}", 10 + 60 * (i % 3)) * (1 + i % 4)
                for i in range(24)]
    data = _mapping(*sections)
    serial, _ = chunk_mapping(data, "m", SETTINGS, workers=1)
    parallel, _ = chunk_mapping(data, "m", SETTINGS, workers=workers)
    assert [(c.section_id, c.chunk_index, c.text) for c in serial] == \
           [(c.section_id, c.chunk_index, c.text) for c in parallel]
    assert [c.chunk_index for c in serial] == list(range(len(serial)))


def test_workers_are_capped_by_cores():
    s = ChunkingSettings(workers=10_000, max_chars=7500, min_chars=50)
    import os

    assert s.effective_workers() == os.cpu_count()


def test_brace_counting_when_no_block_closes_in_column_zero():
    body = "".join(_func(f"f{i}", 70).replace("\n", "\n    ") for i in range(4))  # a whole file indented
    text = "// File: indented.c\nnamespace_like {\n    " + body + "\n}\n"
    chunks, _ = chunk_section("8", text, 7500)
    assert len(chunks) >= 2 and all(len(c.text) <= 7500 for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_worker_count_follows_the_work():
    """A pair's few-MB mapping file is chunked and cleaned in-process (two workers made it
    1.6-4.6x slower); big inputs get a worker per 16 MiB, up to the cores."""
    from spark_pipeline.corpus.settings import BYTES_PER_WORKER, CorpusSettings

    chunking = CorpusSettings.load("hero").chunking
    assert chunking.workers_for(3 * 1024 * 1024) == 1
    assert chunking.workers_for(0) == 1
    assert chunking.workers_for(100 * BYTES_PER_WORKER) == chunking.effective_workers()
