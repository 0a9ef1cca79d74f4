"""The language server (`dslc lsp`) and the editor-independent features it serves.

`dslc.lsp.text` scans any text, finished or half-typed, into tokens and an outline; `dslc.lsp.analysis`
runs the real checker on a buffer and keeps what it learnt (diagnostics, every layer's and name's type);
`dslc.lsp.features` answers hover, completion, definition, symbols and inlay hints from those two. Only
`dslc.lsp.server` imports pygls (the `lsp` extra): the rest is tested and usable without it.
"""
