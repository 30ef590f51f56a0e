"""GPU training-step and lookup throughput of the triton store on the 26 Criteo Kaggle tables, one id per bag.

    python benchmarks/gpu_throughput.py                       # on a CUDA GPU: the committed table, < 5 min (H200)
    python benchmarks/gpu_throughput.py --dry-run             # tiny sizes on the CPU in Triton's interpreter

First every method's outputs on the device are checked against the CPU torch backend with the same weights (the
run stops when one differs). Then, at each batch size, samples/s of a training step (forward, backward, update of
the touched rows; loss = <output, fixed random tensor>) for the two hand-written baselines (one
`nn.EmbeddingBag(sparse=True)` per table + SGD; one concatenated table with `index_select` forward and an
`index_add_` SGD update, no autograd), embtables `full` on the torch and triton stores (row-wise Adagrad, the
default), and every method at budgets 0.01 and 0.001 on triton; ratios are to `full` on triton in the same run.
Last, forward-only lookups of `full` on triton: achieved GB/s (rows read + ids and offsets read + output written)
as a fraction of the device's copy bandwidth, measured here with a 1 GiB device-to-device copy.

Ids are drawn Zipf(1)-like over a fixed permutation of each table (as `lookup_throughput.py`), on the CPU once,
then moved to the device; every config sees the same batches. Times are medians of `--repeats` x `--steps`
steps after `--warmup` untimed ones, with the device synchronised around each timed run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

if "--dry-run" in sys.argv and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported: the kernels run in NumPy

import embtables as et  # noqa: E402
from embtables.app.runinfo import machine, versions  # noqa: E402
from embtables.tablesets import criteo_kaggle_tables  # noqa: E402
from torchrec import KeyedJaggedTensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from lookup_throughput import zipf_ranks  # noqa: E402

Step = Callable[[KeyedJaggedTensor], None]
LR = 0.01


def draw_batches(tables: list[et.TableConfig], batch_size: int, count: int, device: torch.device
                 ) -> list[KeyedJaggedTensor]:
    """KJTs with offsets given (built from lengths alone, torchrec asks FBGEMM for them, and FBGEMM's CPU build has
    no CUDA kernel for that)."""
    g = torch.Generator().manual_seed(0)
    perms = [torch.randperm(t.num_embeddings, generator=g) for t in tables]
    lengths = torch.ones(len(tables) * batch_size, dtype=torch.long)
    offsets = torch.arange(len(tables) * batch_size + 1)
    out = []
    for _ in range(count):
        ids = torch.cat([perm[zipf_ranks(t.num_embeddings, batch_size, g)] for t, perm in zip(tables, perms)])
        out.append(KeyedJaggedTensor([t.name for t in tables], ids.to(device), lengths=lengths.to(device),
                                     offsets=offsets.to(device)))
    return out


def stand_in(method: str, tables: list[et.TableConfig], budget: float | None) -> dict:
    """Options of a learned method (optembed) at `budget`: its stand-in plan of the learned shape (half widths, one
    kept fraction, the first ids), for speed; {} for the others."""
    if not et.get_method(method).learned or budget is None:
        return {}
    from embtables.methods.optembed import stand_in_options

    return stand_in_options(tables, budget * et.full_bytes(tables))


def check_outputs(tables: list[et.TableConfig], device: torch.device, batch: KeyedJaggedTensor) -> list[str]:
    """Every method (budget 0.01; `full` whole) on triton and on torch on the device, against the CPU torch
    backend with the same weights: one line each, raising when an output differs."""
    lines, cpu_batch = [], batch.to(torch.device("cpu"))
    for method in et.list_methods():
        budget = 0.01 if et.get_method(method).compresses else None
        torch.manual_seed(0)
        try:
            ref = et.build_collection(tables, method, budget, backend="torch", **stand_in(method, tables, budget))
        except et.InfeasibleBudget as e:
            lines.append(f"| {method} | - | infeasible at {budget} (smallest {e.smallest_budget:.3g}) |")
            continue
        with torch.no_grad():
            want = ref(cpu_batch).values()
        for backend in ("triton", "torch"):
            c = et.build_collection(tables, method, budget, backend=backend, device=device,
                                    **stand_in(method, tables, budget))
            with torch.no_grad():
                for a, b in zip(ref.store.weights(), c.store.weights()):
                    b.copy_(a)
                c.method.load_state_dict(ref.method.state_dict())
                got = c(batch).values().cpu()
            diff = float((got - want).abs().max())
            lines.append(f"| {method} | {backend} | {diff:.2e} |")
            if not diff <= 1e-5:
                raise SystemExit(f"{method} on {backend} ({device}) differs from the CPU torch backend by {diff}")
    return lines


def per_table_sgd(tables: list[et.TableConfig], batch_size: int, device: torch.device) -> Step:
    bags = torch.nn.ModuleList([torch.nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode="sum", sparse=True)
                                for t in tables]).to(device)
    opt = torch.optim.SGD(bags.parameters(), lr=LR)
    target = torch.randn(batch_size, sum(t.embedding_dim for t in tables), device=device)

    def step(kjt: KeyedJaggedTensor) -> None:
        B, values = batch_size, kjt.values()
        out = torch.cat([b(values[i * B : (i + 1) * B].view(B, 1)) for i, b in enumerate(bags)], 1)  # one id per bag
        (out * target).sum().backward()
        opt.step()
        opt.zero_grad()

    return step


def concatenated_sgd(tables: list[et.TableConfig], batch_size: int, device: torch.device) -> Step:
    rows = [t.num_embeddings for t in tables]
    base = torch.tensor([0] + rows[:-1], device=device).cumsum(0).repeat_interleave(batch_size)
    weight = torch.empty(sum(rows), tables[0].embedding_dim, device=device).uniform_(-0.01, 0.01)
    target = torch.randn(batch_size, len(tables) * tables[0].embedding_dim, device=device)

    def step(kjt: KeyedJaggedTensor) -> None:
        index = kjt.values() + base  # (F B,) feature-major rows of the one table
        out = weight.index_select(0, index)  # forward: (F B, D)
        # backward of <out viewed (B, F D), target>, by hand: each id's row gets its slice of the target
        grad = target.view(batch_size, len(tables), -1).transpose(0, 1).reshape(-1, weight.shape[1])
        weight.index_add_(0, index, grad, alpha=-LR)
        del out

    return step


def ours(method: str, budget: float | None, backend: str) -> Callable[[list[et.TableConfig], int, torch.device], Step]:
    def make(tables: list[et.TableConfig], batch_size: int, device: torch.device) -> Step:
        c = et.build_collection(tables, method, budget, backend=backend, device=device,
                                optimizer=et.SparseOptimizer("rowwise_adagrad", lr=LR), **stand_in(method, tables, budget))
        sparse = c.sparse_optimizer()
        dense = torch.optim.SGD(c.method.parameters(), lr=LR) if any(True for _ in c.method.parameters()) else None
        target = torch.randn(batch_size, sum(c.output_dims.values()), device=device)

        def step(kjt: KeyedJaggedTensor) -> None:
            (c(kjt).values() * target).sum().backward()  # triton updates its tables here
            for o in (sparse, dense):
                if o is not None:
                    o.step()
                    o.zero_grad()

        return step

    return make


def timed(step: Callable[[], None], device: torch.device, steps: int, repeats: int, warmup: int) -> float:
    """Median seconds per call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def measure(make: Callable[[list[et.TableConfig], int, torch.device], Step], tables: list[et.TableConfig],
            batches: list[KeyedJaggedTensor], device: torch.device, args: argparse.Namespace) -> float:
    """Median seconds per training step of one config, cycling through `batches`."""
    step, it = make(tables, batches[0].stride(), device), iter(range(10**9))
    return timed(lambda: step(batches[next(it) % len(batches)]), device, args.steps, args.repeats, args.warmup)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / timed(lambda: dst.copy_(src), device, 5, 3, 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-sizes", default="4096,65536")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="scale the table rows (1.0 = real Criteo Kaggle)")
    p.add_argument("--dry-run", action="store_true", help="tiny tables and batches, 1 step: check that it runs (on "
                   "the CPU under Triton's interpreter when there is no GPU)")
    args = p.parse_args()
    if args.dry_run:
        args.batch_sizes, args.steps, args.repeats, args.warmup, args.scale = "8,16", 1, 1, 1, 1e-3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tables = criteo_kaggle_tables(16, args.scale)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU under Triton's interpreter ({machine()})"
    print(f"command: python {' '.join(sys.argv)}")
    print(f"device: {name}; {versions()}")
    print(f"tables: 26 Criteo Kaggle x {args.scale:g}, {sum(t.num_embeddings for t in tables):,} rows, dim 16; one id "
          f"per bag; median of {args.repeats} x {args.steps} steps after {args.warmup}\n")
    print("| method | store | max abs diff vs CPU torch |\n|---|---|---|")
    print("\n".join(check_outputs(tables, device, draw_batches(tables, sizes[0], 1, device)[0])))
    configs: dict[str, Callable[[list[et.TableConfig], int, torch.device], Step]] = {
        "nn.EmbeddingBag x26 (sparse) + SGD, by hand": per_table_sgd,
        "one concatenated table, index_select + index_add_ SGD": concatenated_sgd,
        "embtables full, torch, row-wise Adagrad": ours("full", None, "torch"),
        "embtables full, triton, row-wise Adagrad": ours("full", None, "triton"),
    }
    for budget in (0.01, 0.001):
        for m in et.list_methods():
            if et.get_method(m).compresses:
                configs[f"embtables {m} {budget:g}, triton"] = ours(m, budget, "triton")
    rates: dict[tuple[str, int], float] = {}
    for B in sizes:
        batches = draw_batches(tables, B, 4, device)
        for label, make in configs.items():
            try:
                rates[label, B] = B / measure(make, tables, batches, device, args)
            except et.InfeasibleBudget:
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the config's tables are gone: give the next one the memory
    print(f"\n| training step | {' | '.join(f'B={B} samples/s | vs full triton' for B in sizes)} |")
    print("|---|" + "---:|---:|" * len(sizes))
    for label in configs:
        cells = []
        for B in sizes:
            r, base = rates.get((label, B)), rates.get(("embtables full, triton, row-wise Adagrad", B))
            cells += ["infeasible", ""] if r is None else [f"{r:,.0f}", f"{r / base:.2f}x" if base else ""]
        print(f"| {label} | {' | '.join(cells)} |")
    bandwidth = copy_bandwidth(device, (1 << 30) if device.type == "cuda" else (1 << 20))
    print(f"\ncopy bandwidth: {bandwidth / 1e9:,.0f} GB/s\n\n| forward-only lookups, full on triton | GB/s | of copy "
          "bandwidth | lookups/s |\n|---|---:|---:|---:|")
    c = et.build_collection(tables, "full", backend="triton", device=device)
    for B in sizes:
        kjt = draw_batches(tables, B, 1, device)[0]
        with torch.no_grad():
            seconds = timed(lambda: c(kjt), device, args.steps, args.repeats, args.warmup)
        N, D = kjt.values().numel(), 16
        moved = N * D * 4 + N * 8 + (N + 1) * 8 + B * len(tables) * D * 4  # rows, ids, offsets read; output written
        print(f"| B={B} | {moved / seconds / 1e9:,.1f} | {moved / seconds / bandwidth:.0%} | {N / seconds:,.0f} |")


if __name__ == "__main__":
    main()
