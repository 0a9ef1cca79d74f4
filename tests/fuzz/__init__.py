"""Spec fuzzing: seeded mutations of the shipped specs, run through `dslc check` (and `dslc build`).

`python -m tests.fuzz --count 5000` runs a campaign; `tests/fuzz/test_fuzz.py` replays the regression
corpus and runs a CI-sized campaign. Modules: `mutate` (the mutants), `harness` (running one mutant
in a watched worker process and classifying what happened), `minimize` (shrinking a crasher),
`campaign` (many mutants, the summary, the corpus).
"""
