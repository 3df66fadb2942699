"""SpecMap: hierarchical datasheet-to-code mapping (paper §3.2, stage 1).

Plain Python, no Dagster: ``pairs`` reads the manifest, ``datasheet`` reads PDFs,
Markdown/text and CMSIS-SVD into section trees, ``repo`` scans a repository safely,
``ctags`` runs Universal Ctags, ``judge`` scores relevance, and ``pipeline`` runs M1–M4
and writes the mapping file with its JSON sidecar.
"""
