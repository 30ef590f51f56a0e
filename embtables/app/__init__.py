"""The application built on the library: training (`train`; its run folder: `checkpoints`, `runvocab`), scoring a
trained run on new data (`evaluate`), memory-budget sweeps (`sweep`, `results`) and their reports (`report`), with
what a result must carry to be reproducible (`runinfo`).

May import: the library (`embtables`), `embtables.models` and `embtables.datasets`; never `embtables.cli`.
Nothing here parses command-line arguments.
"""
