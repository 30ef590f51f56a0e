"""Score a trained run on new data: `evaluate_run` (the command line's `embtables evaluate RUN --data ...`).

The run's best checkpoint (best.pt, the best validation step's; `checkpoint="last"` for checkpoint.pt) scores
every row of the new data, given as

    a raw Criteo TSV file   parsed by `preprocess_criteo` (split none) into a temporary folder next to the output,
                            bad lines skipped and counted exactly as preprocessing does
    a data folder           of `preprocess criteo` / `synth criteo` / `preprocess csv` (every split, or `split`)

Raw ids always go through the vocabulary the run trained with (`runvocab.py`, checked by sha256), never the new
folder's own counts.npz, which ranks ids otherwise. Values the run's training never saw, and the rare ones its
min_count cut, map to the out-of-vocabulary index and are counted per feature. With min_count >= 2 that index's
row trained on the cut values; a feature whose OOV row no training value reached (every feature of a
min_count=1 run) scores its new values with a random initial row: the result then carries a warning naming how
many values hit it (the run is scored anyway: the warning says what the figures are worth). Runs trained with
raw ids feed raw ids: no vocabulary, no OOV. DLRM runs on Criteo-kind data only.

The result (also written atomically as JSON to `out`, by default RUN/evaluate.json): AUC, log loss, calibration
(mean predicted CTR, observed CTR and their ratio), rows scored, bad lines, per-feature OOV counts, warnings.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from torchrec import KeyedJaggedTensor

from embtables.app.checkpoints import BEST, CHECKPOINT, EVALUATION, restore_model, what_runs
from embtables.app.runinfo import check_device
from embtables.app.runvocab import load_run_vocabulary, read_vocabulary_record
from embtables.app.trainer import TrainConfig
from embtables.checkpoint import collection_from_state, load_tensor_file
from embtables.datasets.criteo import DEFAULT_MAX_BAD_FRACTION, preprocess_criteo
from embtables.datasets.loader import Batch, CriteoData
from embtables.datasets.vocab import Vocabulary
from embtables.files import as_json, read_json, write_json
from embtables.metrics import auc, logloss

__all__ = ["evaluate_run", "load_run_model", "map_ids"]


def read_run_config(run: Path, device: str | None = None) -> TrainConfig:
    """The run's TrainConfig (config.json), placed on `device` when given."""
    path = run / "config.json"
    if not path.exists():
        raise ValueError(f"{run} is not a training run folder: no config.json (train one with `embtables train`)")
    config = TrainConfig(**read_json(path))
    return config if device is None else replace(config, device=device)


def load_run_model(run: str | Path, config: TrainConfig, dense_in: int,
                   checkpoint: Literal["best", "last"] = "best") -> tuple[torch.nn.Module, int, Path]:
    """The run's DLRM with the weights of its best (or last) checkpoint, in eval mode on `config.device`.

    Args:
        run: the run folder.
        config: its configuration (`read_run_config`).
        dense_in: number of dense features the model reads.
        checkpoint: `"best"` (best.pt, the best validation step's) or `"last"` (checkpoint.pt).

    Returns:
        (model, the checkpoint's step, its path).
    """
    from embtables.models import DLRM

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = Path(run) / (BEST if checkpoint == "best" else CHECKPOINT)
    if not path.exists():
        hint = (f"; the run has {CHECKPOINT} only (trained before runs kept their best step): use --checkpoint last"
                if checkpoint == "best" and (Path(run) / CHECKPOINT).exists() else "")
        raise ValueError(f"{path}: no such checkpoint{hint}")
    blob = load_tensor_file(path, "training checkpoint")
    if not isinstance(blob, dict) or not {"config", "dense", "collections", "state"} <= set(blob):
        raise ValueError(f"{path}: not a training checkpoint of embtables (missing its config, model or state)")
    mine, theirs = (as_json(what_runs(c)) for c in (asdict(config), blob["config"]))
    if mine != theirs:
        raise ValueError(f"{path} was written by another configuration than {Path(run) / 'config.json'}")
    if len(blob["collections"]) != 1:
        raise ValueError(f"{path}: a DLRM checkpoint holds one collection, this one {len(blob['collections'])}")
    collection = collection_from_state({**blob["collections"][0], "optimizer_state": {}}, str(path), config.backend,
                                       config.device)
    model = DLRM(collection, dense_in=dense_in, **config.model_options).to(config.device)
    restore_model(model, blob, str(path), collections=False)
    return model.eval(), int(blob["state"]["step"]), path


def map_ids(batch: Batch, vocabs: dict[str, Vocabulary], tally: dict[str, list[int]]) -> Batch:
    """`batch` with its raw ids (one per feature per row) mapped through `vocabs`; counts the ids that fall on the
    out-of-vocabulary index into `tally[feature]` as [unseen in training, cut by min_count]."""
    kjt, rows = batch.sparse, batch.batch_size
    keys = kjt.keys()
    raw = kjt.values().view(len(keys), rows)  # feature-major, one id per feature per row
    ids = torch.empty_like(raw)
    for j, feature in enumerate(keys):
        vocab = vocabs[feature]
        ids[j] = vocab.lookup(raw[j])
        hit = ids[j] == vocab.oov_index
        if bool(hit.any()):
            unseen = int(vocab.unknown(raw[j][hit].numpy()).sum())
            tally[feature][0] += unseen
            tally[feature][1] += int(hit.sum()) - unseen
    mapped = KeyedJaggedTensor(keys=keys, values=ids.view(-1), lengths=kjt.lengths(), offsets=kjt.offsets(), stride=rows)
    return Batch(batch.dense, mapped, batch.labels)


@contextmanager
def _scoring_data(data: Path, scratch: Path, max_bad_fraction: float, progress: bool) -> Iterator[tuple[CriteoData, int]]:
    """(the data folder to score, its bad lines): `data` itself, or a raw file preprocessed into `scratch`."""
    if data.is_dir():
        folder = CriteoData(data)
        yield folder, int(folder.summary.get("bad_rows", 0))
        return
    if not data.is_file():
        raise FileNotFoundError(f"{data}: no such file or data folder")
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".embtables-evaluate-", dir=scratch) as tmp:
        summary = preprocess_criteo(data, Path(tmp) / "data", split="none", progress=progress,
                                    max_bad_fraction=max_bad_fraction)
        yield CriteoData(Path(tmp) / "data"), int(summary["bad_rows"])


def evaluate_run(run: str | Path, data: str | Path, out: str | Path | None = None, split: str | None = None,
                 checkpoint: Literal["best", "last"] = "best", device: str | None = None,
                 max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION, progress: bool = False) -> dict[str, Any]:
    """Score a trained run on new data; returns the result (see the module docstring), also written to `out`.

    Args:
        run: the run folder of `embtables train`.
        data: a raw Criteo TSV file (plain or gzip) or a data folder.
        out: the JSON file to write (default RUN/evaluate.json).
        split: score only this split of a data folder (default: every split, in order).
        checkpoint: `"best"` (the best validation step's) or `"last"`.
        device: where to score (default: the run's device).
        max_bad_fraction: of a raw file, the share of bad lines above which it is refused (as preprocessing).
        progress: show preprocessing's progress bar for a raw file.

    Raises:
        ValueError: not a DLRM run, a mismatched vocabulary, features the run does not know, an empty input, ...;
            each naming the run, file or feature.
    """
    run, data = Path(run), Path(data)
    out = run / EVALUATION if out is None else Path(out)
    if split is not None and data.is_file():
        raise ValueError(f"{data} is a raw file, scored whole: split (--split) applies to data folders only")
    config = read_run_config(run, device)
    check_device(config.device)
    if config.model != "dlrm":
        raise ValueError(f"{run}: evaluate scores DLRM runs on Criteo-kind data; this run trained {config.model!r}")
    record = read_vocabulary_record(run)
    counts = None if config.raw_ids else load_run_vocabulary(run)[0]
    model, step, path = load_run_model(run, config, len(record["dense"]), checkpoint)
    with _scoring_data(data, out.parent, max_bad_fraction, progress) as (folder, bad_lines):
        for kind, theirs in (("dense", folder.dense), ("categorical", folder.sparse)):
            if theirs != record[kind]:
                raise ValueError(f"{data}: {_mismatch(theirs, record[kind])} among its {kind} features (the run's "
                                 f"are listed in {run / 'vocabulary.json'})")
        splits = list(folder.splits) if split is None else [split]
        vocabs = None
        if counts is not None:
            lost = [f for f in folder.sparse if f not in counts]
            if lost:
                raise ValueError(f"{run}: its vocabulary has no feature {lost[0]!r}")
            vocabs = {f: Vocabulary(*counts[f], min_count=config.min_count) for f in folder.sparse}
        tally = {f: [0, 0] for f in folder.sparse}
        logits, labels = [], []
        with torch.no_grad():
            for name in splits:
                for batch in folder.batches(name, max(config.batch_size, 4096), ids="raw"):  # as Trainer.evaluate
                    batch = batch if vocabs is None else map_ids(batch, vocabs, tally)
                    on = batch if config.device == "cpu" else batch.to(config.device)
                    logits.append(model(on.dense, on.sparse).cpu())
                    labels.append(batch.labels)
    if not logits:
        raise ValueError(f"{data}: no row to score (splits {splits})")
    z, y = torch.cat(logits), torch.cat(labels)
    result = {"run": str(run.resolve()), "checkpoint": str(path.resolve()), "step": step, "data": str(data.resolve()),
              "splits": splits, "rows": int(y.numel()), "bad_lines": bad_lines, "auc": auc(z, y),
              "logloss": logloss(z, y), "calibration": calibration(z, y), "min_count": config.min_count,
              "raw_ids": config.raw_ids, "oov": None, "oov_values": None, "warnings": []}
    if vocabs is not None:
        result["oov"] = {f: {"values": a + b, "unseen": a, "rare": b, "row_trained": _trained(vocabs[f])}
                         for f, (a, b) in tally.items()}
        result["oov_values"] = sum(a + b for a, b in tally.values())
        result["warnings"] = untrained_oov_warnings(result["oov"], config.min_count)
    write_json(out, result)
    return result


def calibration(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """Mean predicted CTR (mean sigmoid of the logits), observed CTR (mean label) and their ratio (None when
    nothing was clicked): 1 is calibrated, above 1 over-predicts.

    Example:
        >>> calibration(torch.tensor([0.0, 0.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
        {'mean_predicted': 0.5, 'observed': 0.25, 'ratio': 2.0}
    """
    predicted = float(torch.sigmoid(logits.double()).mean())
    observed = float(labels.double().mean())
    return {"mean_predicted": predicted, "observed": observed, "ratio": predicted / observed if observed else None}


def _trained(vocab: Vocabulary) -> bool:
    """Whether any training value reached the OOV index (values cut by min_count train it)."""
    return bool(vocab.index_counts()[-1] > 0)


def untrained_oov_warnings(oov: dict[str, dict[str, Any]], min_count: int) -> list[str]:
    """One warning line when values hit an OOV row no training value reached (its random initial row), naming
    how many, the features most hit, and what to change."""
    hit = {f: o["values"] for f, o in oov.items() if o["values"] and not o["row_trained"]}
    if not hit:
        return []
    top = ", ".join(f"{f} {n:,}" for f, n in sorted(hit.items(), key=lambda kv: -kv[1])[:5])
    why = ("min_count=1 cuts no training value, so no OOV row trained" if min_count == 1 else
           "none of their training values was cut by min_count")
    return [f"{sum(hit.values()):,} values of {len(hit)} feature(s) ({top}{', ...' if len(hit) > 5 else ''}) map to an "
            f"out-of-vocabulary row that never trained ({why}): they read its random initial embedding; train with "
            "--min-count 2 (the default) so that the rare values train that row"]


def _mismatch(theirs: list[str], mine: list[str]) -> str:
    """What differs between the data's feature columns and the run's, naming the first feature concerned."""
    missing, extra = [f for f in mine if f not in theirs], [f for f in theirs if f not in mine]
    if missing:
        return f"lacks feature {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    if extra:
        return f"has feature {extra[0]!r}, which the run never trained on"
    return f"has the run's features in another order ({', '.join(theirs[:4])}, ...)"
