"""Runs print nothing a user cannot act on: torch's is_fx_tracing message (triggered by torchrec's KJT) is dropped,
and only it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = """
import torch, embtables as et, embtables.app
import torch.fx._symbolic_trace as st
from torchrec import KeyedJaggedTensor
ebc = et.build_collection([et.TableConfig("C1", 100, 8)], "hash", budget=0.5)
ebc(KeyedJaggedTensor(["C1"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))
st.log.warning("another message of that logger")
"""


def test_is_fx_tracing_message_is_dropped_and_nothing_else():
    run = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "is_fx_tracing will return true" not in run.stderr + run.stdout
    assert "another message of that logger" in run.stderr


def test_without_the_app_the_message_is_torchs():
    """The filter is ours: a plain torchrec KJT prints it (so the test above tests something)."""
    code = "import torch\nfrom torchrec import KeyedJaggedTensor\nKeyedJaggedTensor(['a'], torch.tensor([1]), lengths=torch.tensor([1]))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "is_fx_tracing will return true" in run.stderr
