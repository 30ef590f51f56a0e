"""Data sets (imported as embtables.datasets): preparing them on disk, generating planted synthetic ones, and
reading them back as batches of dense features and KeyedJaggedTensors.

    layout.py                 the on-disk layout every data set writes and reads (splits, counts, summary)
    criteo.py                 Criteo Kaggle / 1TB text -> the layout; with criteo_chunks.py (chunks, thread
                              pool, resumable parts), criteo_parse.py (vectorised line parsing), lines.py
                              (streaming lines of plain or gzip files), parts.py (atomic Parquet part writer)
                              and frequency.py (exact streaming value counts)
    tabular.py                a user's CSV or Parquet log -> the same layout (`preprocess csv`); with
                              tabular_read.py (streaming records with line numbers), tabular_values.py (labels,
                              numbers, hashed categories, column typing) and tabular_write.py (splits, parts,
                              counts, bad rows)
    vocab.py                  raw ids -> frequency-ranked embedding indices, with an out-of-vocabulary index;
                              vocab_from.py: a folder that maps ids with a training folder's or run's vocabulary
    loader.py, shuffle.py     batches of a Criteo-kind folder; the seeded shuffle buffer they stream through
    sequences.py              behaviour sequences for DIN: the Amazon interactions file -> samples; with
                              din_samples.py (samples and splits) and sequence_loader.py (their batches)
    synthetic.py              planted synthetic Criteo; synthetic_sequences.py: planted synthetic sequences;
                              truth.py: their Bayes scores and output folder
    builtin.py                `--data synthetic`: the planted data generated once into a cache folder

May import: the core library (`embtables.config`, `files`, `hashing`, `metrics`, `tablesets`, ...) and
`embtables.datasets` itself; never `embtables.app`, `embtables.cli` or `embtables.models`. Nothing here parses
command-line arguments (the subcommands live in `embtables.cli.data`).
"""
