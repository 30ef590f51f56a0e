"""Files from elsewhere: checkpoints load without running code from them, and damaged or mismatched checkpoints,
run files and vocabularies are refused with errors that name the file (data files: test_data_files.py)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embtables as et
from embtables.app.trainer import TrainConfig, Trainer, open_data
from embtables.checkpoint import collection_state, load_collection_state
from embtables.files import read_json

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(rows=3000, scale=1e-4, min_rows=20, part_rows=1000)
TABLES = [et.TableConfig("a", 500, 8), et.TableConfig("b", 40, 8)]


class Payload:
    """What a malicious checkpoint carries: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("syn")
    synth_criteo(path, seed=0, **SMALL)
    return str(path)


def config(data: str, **kw) -> TrainConfig:
    return TrainConfig(**{**dict(data=data, batch_size=256, max_steps=6, model_options=dict(bottom=(16, 8), top=(16,)),
                                 embedding_dim=8, method="hash", budget=0.5), **kw})


def test_a_malicious_collection_file_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    state = collection_state(et.build_collection(TABLES, "hash", 0.5))
    state["tables"]["a"] = Payload(marker)  # where a tensor belongs
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="evil.pt: refused: it asks to build posix.system"):
        et.load_collection(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save(Payload(marker), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="bare.pt: refused"):
        et.load_collection(tmp_path / "bare.pt")
    assert not marker.exists()


def test_a_malicious_training_checkpoint_is_refused_and_never_runs(data, tmp_path):
    cfg = config(data)
    Trainer(cfg, tmp_path / "run", progress=False).fit(stop_after=3)
    path = tmp_path / "run" / "checkpoint.pt"
    blob = torch.load(path, weights_only=True)
    marker = tmp_path / "ran"
    blob["state"]["evals"] = Payload(marker)
    torch.save(blob, path)
    with pytest.raises(ValueError, match="checkpoint.pt: refused: it asks to build posix.system"):
        Trainer(cfg, tmp_path / "run", progress=False).fit(resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "not torch"])
def test_damaged_checkpoints_are_refused_naming_the_file(data, tmp_path, damage):
    c = et.build_collection(TABLES, "qr", 0.5)
    et.save_collection(c, tmp_path / "c.pt")
    Trainer(config(data), tmp_path / "run", progress=False).fit(stop_after=2)
    for path in (tmp_path / "c.pt", tmp_path / "run" / "checkpoint.pt"):
        whole = path.read_bytes()
        path.write_bytes({"empty": b"", "truncated": whole[: len(whole) // 2], "not torch": b"{}\n"}[damage])
    expect = "the file is empty" if damage == "empty" else "truncated, damaged or not written by torch.save"
    with pytest.raises(ValueError, match=f"c.pt: not a readable embtables collection file: {expect}"):
        et.load_collection(tmp_path / "c.pt")
    with pytest.raises(ValueError, match=f"checkpoint.pt: not a readable training checkpoint: {expect}"):
        Trainer(config(data), tmp_path / "run", progress=False).fit(resume=True)


def test_a_checkpoint_of_another_method_plan_or_tables_is_refused(data, tmp_path):
    Trainer(config(data), tmp_path / "run", progress=False).fit(stop_after=2)
    with pytest.raises(ValueError, match="checkpoint.pt was written by a different configuration: budget=0.5 "
                                         "\\(now 0.45\\), method='hash' \\(now 'qr'\\)"):
        Trainer(config(data, method="qr", budget=0.45), tmp_path / "run", progress=False).fit(resume=True)
    saved = collection_state(et.build_collection(TABLES, "hash", 0.5))
    for other, key in ((et.build_collection(TABLES, "qr", 0.5), "method"),
                       (et.build_collection([TABLES[0], et.TableConfig("b", 41, 8)], "hash", 0.5), "tables")):
        with pytest.raises(ValueError, match=f"run-3: its plan differs from this collection's in '{key}'"):
            load_collection_state(other, saved, "run-3")


def test_a_run_refuses_to_resume_on_a_changed_vocabulary(data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    cfg = config(str(folder))
    Trainer(cfg, tmp_path / "run", progress=False).fit(stop_after=2)
    counts = folder / "counts.npz"
    recorded = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["vocabulary"]
    assert recorded["file"] == str(counts) and len(recorded["sha256"]) == 64
    with np.load(counts) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["C1/counts"][0] += 1  # one count more: the same shapes, another ranking for a run to be silently off
    with open(counts, "wb") as f:
        np.savez(f, **arrays)
    with pytest.raises(ValueError, match=f"checkpoint.pt: the run recorded vocabulary {re.escape(str(counts))} "
                                         f"\\(sha256 {recorded['sha256'][:16]}\\.\\.\\.\\), but the data folder now has "):
        Trainer(cfg, tmp_path / "run", progress=False).fit(resume=True)


def test_damaged_json_files_are_refused_naming_the_file(data, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    summary = folder / "summary.json"
    summary.write_text(summary.read_text()[:40])
    with pytest.raises(ValueError, match="summary.json: not valid JSON"):
        open_data(folder)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="bin.json: not valid JSON"):
        read_json(tmp_path / "bin.json")


def test_nothing_in_the_project_unpickles_or_evaluates_file_contents():
    """The loaders above are the only way in: no pickle, no unrestricted torch.load, no numpy pickles, no eval."""
    banned = re.compile(r"\bimport pickle\b|\bfrom pickle\b|\bpickle\.|weights_only\s*=\s*False|allow_pickle\s*=\s*True"
                        r"|(?<![\w.])eval\(|(?<![\w.])exec\(|\bmarshal\b|\bshelve\b|\bdill\b|\bjoblib\b")
    loads = re.compile(r"torch\.load\(")
    found = []
    for folder in ("embtables", "models", "datasets", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if banned.search(code) or (loads.search(code) and "weights_only=True" not in code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    """Not mkstemp's 0600: results, reports and checkpoints are for the user's group (or team) to read too."""
    from embtables.files import atomic_write, current_umask, write_json

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        write_json(tmp_path / "a.json", {"x": 1})
        atomic_write(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
        assert os.umask(umask) == umask  # reading it changed nothing
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
