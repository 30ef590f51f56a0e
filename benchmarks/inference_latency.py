"""Serving latency of one lookup call on the 26 Criteo Kaggle tables: fp32, quantized, compressed, and both.

    python benchmarks/inference_latency.py --out benchmarks/results/inference_latency.md
    python benchmarks/inference_latency.py --scale 0.01 --repeats 20      # quick look
    python benchmarks/inference_latency.py --configs embtables:full:int8,embtables-torch:full:int8 --out ...

One call = the collection's forward on a batch of B samples, one id per feature (Criteo's layout), under
`torch.no_grad()` in eval mode, remap and combine included. Ids are drawn Zipf(1)-like, as in
lookup_throughput.py. Per config and B: `--warmup` untimed calls, then `--repeats` timed ones (each its own
`perf_counter` pair, over pre-drawn batches), p50 and p99 in microseconds. Each config runs in a fresh process,
one after another (never two at once), so none pays for what another allocated.

Configs: `full` in fp32 (embtables on the fbgemm store, FBGEMM's training TBE), int8 and int4
(`Collection.quantize`, FBGEMM's inference TBE); every other method at budget 0.01 in fp32 and int8; and torchrec's
quantized `EmbeddingBagCollection` (`torchrec.quant`) of the full tables in fp32, int8 and int4, the same FBGEMM
inference kernels behind torchrec's module: the reference for what our remap, combine and checks cost on top.
torchrec aligns each quantized row to 16 bytes (32 bytes an int8 row of dim 16, 16 an int4 one), embtables packs
them (20 and 12 bytes): the bytes column counts what each allocated.
`optembed` uses its stand-in plan (`stand_in_options`), not a learned one. `embtables-torch` (only with
`--configs`) is `Collection.quantize(dtype, backend="torch")`: the same rows looked up by PyTorch operations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchrec import KeyedJaggedTensor  # noqa: E402

import embtables as et  # noqa: E402
from embtables.app.runinfo import machine, versions  # noqa: E402
from embtables.files import atomic_write  # noqa: E402
from embtables.tablesets import criteo_kaggle_tables  # noqa: E402

BATCHES = (1, 64, 512, 4096)
BUDGET = 0.01


def configs() -> list[tuple[str, str, str]]:
    """(what, method, dtype) of every line of the table, in order."""
    out = [("embtables", "full", d) for d in ("fp32", "int8", "int4")]
    out += [("embtables", m, d) for m in et.list_methods() if m != "full" for d in ("fp32", "int8")]
    return out + [("torchrec", "full", d) for d in ("fp32", "int8", "int4")]


def _zipf_batches(tables: list[et.TableConfig], batch_size: int, count: int) -> list[KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(batch_size)
    out = []
    for _ in range(count):
        ids = []
        for t in tables:  # P(rank k) ~ 1 / (k + 1), ranks scattered by a multiplicative hash
            u = torch.rand(batch_size, generator=g, dtype=torch.float64)
            rank = (torch.exp(u * torch.log(torch.tensor(t.num_embeddings + 1.0))) - 1).long()
            ids.append((rank * 2654435761) % t.num_embeddings)
        lengths = torch.ones(len(tables) * batch_size, dtype=torch.long)
        out.append(KeyedJaggedTensor([t.name for t in tables], torch.cat(ids), lengths=lengths))
    return out


def _ours(tables: list[et.TableConfig], method: str, dtype: str, kernel: str = "fbgemm") -> tuple[torch.nn.Module, int]:
    from embtables.methods.optembed import stand_in_options

    budget = None if method == "full" else BUDGET
    options = stand_in_options(tables, BUDGET * et.full_bytes(tables)) if et.get_method(method).learned else {}
    c = et.build_collection(tables, method, budget, backend="fbgemm", **options).eval()
    if dtype != "fp32":
        c = c.quantize(dtype, backend=kernel)
    return c, c.memory_bytes()


def _torchrecs(tables: list[et.TableConfig], dtype: str) -> tuple[torch.nn.Module, int]:
    from torchrec import EmbeddingBagConfig
    from torchrec.modules.embedding_configs import DataType
    from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

    kind = {"fp32": DataType.FP32, "int8": DataType.INT8, "int4": DataType.INT4}[dtype]
    configs = [EmbeddingBagConfig(num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim, name=t.name,
                                  feature_names=[t.name], data_type=kind) for t in tables]
    ebc = QuantEBC(configs, is_weighted=False, device=torch.device("cpu"), output_dtype=torch.float)
    # bytes its TBEs allocated (rows aligned to 16 bytes there; its state_dict views misstate int4 rows)
    size = sum(m.weights_host.numel() + m.weights_dev.numel() for m in ebc._emb_modules)
    return ebc, size


def measure(what: str, method: str, dtype: str, scale: float, warmup: int, repeats: int) -> dict:
    """One config's p50/p99 microseconds per batch size, in this process."""
    tables = criteo_kaggle_tables(16, scale)
    kernel = "torch" if what == "embtables-torch" else "fbgemm"
    module, size = _torchrecs(tables, dtype) if what == "torchrec" else _ours(tables, method, dtype, kernel)
    result = {"what": what, "method": method, "dtype": dtype, "bytes": size, "full_bytes": et.full_bytes(tables)}
    with torch.no_grad():
        for B in BATCHES:
            batches = _zipf_batches(tables, B, 16)
            for i in range(warmup):
                module(batches[i % len(batches)])
            times = []
            for i in range(repeats):
                kjt = batches[i % len(batches)]
                t0 = time.perf_counter()
                out = module(kjt)
                (out.values() if hasattr(out, "values") else out).sum()  # the result is used
                times.append(time.perf_counter() - t0)
            times.sort()
            result[str(B)] = {"p50": times[len(times) // 2] * 1e6, "p99": times[min(len(times) - 1, int(0.99 * len(times)))] * 1e6}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1.0, help="table rows as a fraction of Criteo Kaggle's")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default=None)
    p.add_argument("--configs", default=None, help="what:method:dtype,... (what: embtables, embtables-torch, "
                   "torchrec); default the full table's configs")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # what,method,dtype: measure it here
    args = p.parse_args()
    if args.one:
        what, method, dtype = args.one.split(",")
        print(json.dumps(measure(what, method, dtype, args.scale, args.warmup, args.repeats)))
        return
    rows = []
    chosen = configs() if args.configs is None else [tuple(c.split(":")) for c in args.configs.split(",")]
    for what, method, dtype in chosen:  # one fresh process each, one after another
        cmd = [sys.executable, __file__, "--one", f"{what},{method},{dtype}", "--scale", str(args.scale),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{what} {method} {dtype} failed:\n{run.stderr[-3000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{what} {method} {dtype}: " + ", ".join(f"B={B} {r[str(B)]['p50']:.0f}/{r[str(B)]['p99']:.0f} us"
                                                       for B in BATCHES), flush=True)
    command = "python benchmarks/inference_latency.py" + (f" --scale {args.scale:g}" if args.scale != 1 else "") + (
        f" --repeats {args.repeats}" if args.repeats != 200 else "") + (
        f" --configs {args.configs}" if args.configs else "") + (f" --out {args.out}" if args.out else "")
    lines = ["# Serving latency of one lookup call, 26 Criteo Kaggle tables", "",
             f"Command: `{command}`", "",
             f"Machine: {machine()}; torch {torch.__version__}, fbgemm-gpu-cpu {versions().get('fbgemm-gpu-cpu')}, torchrec "
             f"{versions().get('torchrec')}. Dim 16, {sum(t.num_embeddings for t in criteo_kaggle_tables(16, args.scale)):,} "
             f"rows; one id per feature per sample; p50 / p99 microseconds over {args.repeats} calls after "
             f"{args.warmup} warm-up calls, each config in its own process. embtables fp32 runs on the fbgemm store; "
             "int8/int4 on FBGEMM's inference kernels (`Collection.quantize`), `embtables-torch` on PyTorch operations "
             "(`quantize(dtype, backend=\"torch\")`, which exports); methods at budget 0.01.", "",
             "| module | method | dtype | bytes | of full | " + " | ".join(f"B={B} p50 / p99 us" for B in BATCHES) + " |",
             "|---|---|---|---|---|" + "---|" * len(BATCHES)]
    for r in rows:
        lines.append(f"| {r['what']} | {r['method']} | {r['dtype']} | {r['bytes']:,} | {r['bytes'] / r['full_bytes']:.4g} | "
                     + " | ".join(f"{r[str(B)]['p50']:,.0f} / {r[str(B)]['p99']:,.0f}" for B in BATCHES) + " |")
    if args.out:
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
