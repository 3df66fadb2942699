import os

import pytest

from spark_pipeline.specmap.ctags import run_ctags
from spark_pipeline.specmap.repo import ScanLimits, scan_repository


@pytest.fixture
def messy_repo(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "ok.c").write_text("int ok(void) { return 1; }\n")
    (repo / "src" / "crlf.c").write_bytes(b"int a;\r\nint b;\r\n")
    (repo / "src" / "blob.c").write_bytes(b"\x7fELF\x00\x00\x01binary")
    (repo / "src" / "latin.c").write_bytes("/* Gr\xfc\xdfe from M\xfcnchen */\nint g;\n".encode("latin-1"))
    with open(repo / "src" / "huge.c", "wb") as handle:  # a 100 MB single-line file
        block = b"a" * (1 << 20)
        for _ in range(100):
            handle.write(block)
    (repo / "src" / "minified.h").write_text("#define X " + "1+" * 4000 + "1\n")
    outside = tmp_path / "secret.c"
    outside.write_text("int secret;\n")
    os.symlink(outside, repo / "src" / "escape.c")
    os.symlink(repo / "src" / "ok.c", repo / "src" / "alias.c")
    (repo / "README.md").write_text("docs")
    return repo


def test_scan_rejects_bad_files_with_reasons(messy_repo):
    scan = scan_repository(messy_repo, label="messy")
    assert sorted(scan.files) == ["src/crlf.c", "src/latin.c", "src/ok.c"]
    reasons = {r.input.split(":", 1)[1]: r.reason for r in scan.rejections}
    assert reasons == {
        "src/blob.c": "binary",
        "src/huge.c": "too_large",
        "src/minified.h": "long_line",
        "src/escape.c": "symlink_outside_repo",
        "src/alias.c": "symlink",
    }
    messages = " ".join(r.message for r in scan.rejections)
    assert "messy: src/huge.c is 104,857,600 bytes" in messages
    assert all(r.message.startswith("messy: src/") for r in scan.rejections)
    # decoded, not garbled: charset detection names a Western code page (Latin-1 reads the same letters)
    assert scan.files["src/latin.c"].encoding in {"latin-1", "latin_1", "cp1252", "cp1250"}
    assert "Grüße" in scan.files["src/latin.c"].text
    assert [n.reason for n in scan.notes] == ["non_utf8"]
    assert "\r" not in scan.files["src/crlf.c"].text
    assert scan.other_files == 1


def test_scan_limits_are_settings(messy_repo):
    scan = scan_repository(messy_repo, limits=ScanLimits(max_file_bytes=10, max_line_chars=10**6))
    assert "src/ok.c" not in scan.files
    assert {r.reason for r in scan.rejections} >= {"too_large"}


def test_scan_only_listed_files(messy_repo):
    scan = scan_repository(messy_repo, listed={"src/ok.c", "README.md"})
    assert list(scan.files) == ["src/ok.c"] and not scan.rejections


def test_ctags_parses_headers_as_c_with_end_lines(tmp_path):
    (tmp_path / "regs.h").write_text(
        "#define REG_CTRL 0x10\n"
        "typedef struct {\n  int a;\n  int b;\n} regs_t;\n"
        "enum mode { MODE_A, MODE_B };\n"
        "int regs_init(regs_t *r);\n"
        "static inline int regs_get(regs_t *r)\n{\n  return r->a;\n}\n"
    )
    symbols = run_ctags(tmp_path, ["regs.h"])["regs.h"]
    kinds = {(s.name, s.kind) for s in symbols}
    assert ("REG_CTRL", "macro") in kinds
    assert ("regs_t", "typedef") in kinds
    assert ("MODE_A", "constant") in kinds and ("mode", "enum") in kinds
    assert ("regs_init", "prototype") in kinds  # C mode reports prototypes (C++ mode would not)
    getter = next(s for s in symbols if s.name == "regs_get")
    assert (getter.line, getter.end) == (8, 11)
    struct = next(s for s in symbols if s.kind == "struct")
    assert struct.end == 5


def test_ctags_assembly_labels(tmp_path):
    (tmp_path / "start.s").write_text("  .global Reset_Handler\nReset_Handler:\n  b Reset_Handler\n")
    names = {s.name for s in run_ctags(tmp_path, ["start.s"])["start.s"]}
    assert "Reset_Handler" in names
