"""The application built on the library: training (`train`; its run folder: `checkpoints`, `runvocab`), scoring a
trained run on new data (`evaluate`), memory-budget sweeps (`sweep`, `results`) and their reports (`report`), with
what a result must carry to be reproducible (`runinfo`), and the dependencies' messages runs do not print (`quiet`).

May import: the library (`embtables`), `embtables.models` and `embtables.datasets`; never `embtables.cli`.
Nothing here parses command-line arguments.
"""

from embtables.app.quiet import quiet_known_messages

quiet_known_messages()  # runs print nothing a user cannot act on (see quiet.py)
