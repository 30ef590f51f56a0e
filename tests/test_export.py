"""torch.export of the inference path (eval mode, `torch.no_grad()`) of every registered method: what exports and
what cannot, each asserted with its error (see tests/test_compile.py's docstring and
benchmarks/results/compile_export.md). Shares tests/test_compile.py's collections and fixtures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.bags import Bags
from embtables.models.dlrm import DLRMHead
from tests.conftest import random_kjt
from tests.test_compile import METHODS, TABLES, collection, fakes, fresh_dynamo  # noqa: F401 (fixtures)

def _ids(c: et.Collection, batch: int, seed: int) -> Tensor:
    """(F, B) in-range ids, one per bag."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, c.tables[t].num_embeddings, (batch,), generator=g)
                        for t in c.method.feature_table])


class KnownLayout(nn.Module):
    """`Collection.lookup` on one id per bag, ids (F, B) -> (B, sum D): the host facts `bags_from_kjt` reads from a
    batch (ids per feature, longest bag) follow from the input's shape, and the caller vouches that every id is in
    range (`Bags.checked`, as `bags_from_kjt` answers it off the CPU); `checked=False` runs the range check."""

    def __init__(self, c: et.Collection, checked: bool = True) -> None:
        super().__init__()
        self.c, self.checked = c, checked

    def forward(self, ids: Tensor) -> Tensor:
        F, B = ids.shape
        upper = self.c.id_upper
        answered = (tuple(upper), False) if self.checked and upper is not None else None
        bags = Bags(ids.reshape(-1), torch.arange(F * B + 1), None, [B] * F, B, longest=1, checked=answered)
        return self.c.lookup(bags)


def _export_forward(c: et.Collection, tables: list[et.TableConfig] = TABLES) -> torch.export.ExportedProgram:
    """`c.forward` exported from a batch of 6 with a dynamic batch size and number of ids (the KJT's pytree leaves:
    values, weights, lengths, offsets, stride_per_key_per_rank, inverse_indices)."""
    kjt = random_kjt(tables, batch_size=6, seed=1)
    c(kjt)  # first eagerly: see test_lookup_on_a_known_layout_exports
    batch, ids = torch.export.Dim("batch", min=2, max=4096), torch.export.Dim("ids", min=2, max=10**6)
    shapes = [{0: ids}, None, {0: len(kjt.keys()) * batch}, None, None, None]
    return torch.export.export(c, (kjt,), dynamic_shapes={"features": shapes})


def _bad_batches(kjt: KeyedJaggedTensor, upper: list[int | None] | None) -> list[tuple[KeyedJaggedTensor, str, str]]:
    """Batches eager refuses, with eager's message and the program's assert's: a negative bag length (the same
    total), lengths that do not sum to the ids, and an id one past the end of its table (the first feature that has
    a bound; none when none has). Not "outside" alone: the fused kernel also refuses such an id, after the remap."""
    keys, values, lengths = kjt.keys(), kjt.values(), kjt.lengths()
    moved = lengths.clone()
    moved[0], moved[1] = -1, moved[1] + moved[0] + 1
    asserted = "Runtime assertion failed for expression"
    out = [(KeyedJaggedTensor(keys, values, lengths=moved), "decrease at bag 0", asserted),
           (KeyedJaggedTensor(keys, values[1:], lengths=lengths), "end at the number of ids", asserted)]
    for f, u in enumerate(upper or ()):
        if u is not None:
            bad, first = values.clone(), int(lengths.view(len(keys), -1)[:f].sum())
            bad[first] = u
            return out + [(KeyedJaggedTensor(keys, bad, lengths=lengths), "outside", r"outside \[0, num_embeddings\)")]
    return out


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("store", ["torch", "fused"])
@pytest.mark.parametrize("method", METHODS)
def test_the_collection_forward_exports(method: str, store: str):
    """Equal to eager at another batch size; a batch eager refuses (ValueError) fails an assert of the program
    (RuntimeError); unified hashes every id, so none is outside its table."""
    c = collection(method, store)
    with torch.no_grad():
        run = _export_forward(c).module()
        other = random_kjt(TABLES, batch_size=11, seed=2)
        torch.testing.assert_close(run(other).values(), c(other).values(), rtol=1e-6, atol=1e-6)
        bad = _bad_batches(other, c.id_upper)
        assert len(bad) == (2 if method == "unified" else 3)
        for kjt, eager, program in bad:
            with pytest.raises(ValueError, match=eager):
                c(kjt)
            with pytest.raises(RuntimeError, match=program):
                run(kjt)


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("method", ["full", "qr", "hash"])
def test_the_exported_forward_picks_the_features(method: str):
    """A KJT with a key the collection does not read and its keys in another order: the features' ids are sliced at
    symbolic offsets (for hash, `hash_to_range` then expands its per-id key and range whatever their count)."""
    c, tables = collection(method, "fused"), [et.TableConfig("other", 50, 8)] + TABLES[::-1]
    with torch.no_grad():
        other = random_kjt(tables, batch_size=11, seed=2)
        torch.testing.assert_close(_export_forward(c, tables).module()(other).values(), c(other).values())


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("store", ["torch", "fused"])
@pytest.mark.parametrize("method", METHODS)
def test_unpooled_rows_export(method: str, store: str):
    """Per-id rows (DIN's history): `FlatStore.rows` sizes its singleton bags by the most ids of a lookup, a
    symbol under export (`Bags.most_ids`); checked at another batch, and on a batch without ids."""
    unpooled = [et.TableConfig("seq", 3000, 8, feature_names=("h", "t"), pooling="none")]
    c = collection(method, store, unpooled)
    with torch.no_grad():
        program = _export_forward(c, unpooled).module()
        other = random_kjt(unpooled, batch_size=11, seed=2)
        for f in ("h", "t"):
            torch.testing.assert_close(program(other)[f].values(), c(other)[f].values())
    empty = KeyedJaggedTensor(["h", "t"], torch.zeros(0, dtype=torch.long), lengths=torch.zeros(4, dtype=torch.long))
    with torch.no_grad():
        assert c(empty)["h"].values().shape == (0, 8)


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize("store", ["torch", "fused"])
@pytest.mark.parametrize("method", METHODS)
def test_lookup_on_a_known_layout_exports(method: str, store: str):
    """With a dynamic batch size: the ops take it as a SymInt."""
    c = collection(method, store)
    model = KnownLayout(c)
    ids = _ids(c, 6, seed=1)
    with torch.no_grad():
        model(ids)  # first eagerly: the fused store caches each program's spec tensors at the first call, and a
        # first call under export would cache FakeTensors, which every later eager call would then read
        ep = torch.export.export(model, (ids,), dynamic_shapes={"ids": {1: torch.export.Dim("batch", min=2, max=4096)}})
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        if store == "fused":
            assert "embtables.fused_forward.default" in targets
        if method == "qr":
            assert "embtables.digits_remap.default" in targets
        other = _ids(c, 11, seed=2)
        torch.testing.assert_close(ep.module()(other), model(other), rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("fakes")
def test_the_range_check_exports_as_an_assert():
    """`outside`'s Python bool has no fake value: under export `Bags.outside` asserts a tensor in the graph instead
    (`KnownLayout(checked=False)`), which fails on an id outside its table."""
    c = collection("full", "torch")
    model = KnownLayout(c, checked=False)
    with torch.no_grad():
        ep = torch.export.export(model, (_ids(c, 6, seed=1),))
        assert "aten._assert_async.msg" in {str(n.target) for n in ep.graph.nodes}
        ids = _ids(c, 6, seed=2)
        torch.testing.assert_close(ep.module()(ids), model(ids))
        ids[2, 0] = c.id_upper[2]
        with pytest.raises(RuntimeError, match=r"outside \[0, num_embeddings\)"):
            ep.module()(ids)


@pytest.mark.usefixtures("fakes")
def test_the_quantized_store_cannot_export():
    c = collection("hash", "quantized")
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"fbgemm\.AtomicCounter haven't registered a fake class"):
        torch.export.export(KnownLayout(c), (_ids(c, 6, seed=1),))


@pytest.mark.parametrize("method", ["full", "multihash"])  # widths D, and widths that DLRM projects to D
def test_dlrm_head_exports(method: str):
    c = collection(method, "torch")
    head = DLRMHead(list(c.output_dims.values()), dense_in=13, bottom=(32, 8), top=(16,)).eval()
    with torch.no_grad():
        pooled = c(random_kjt(TABLES, batch_size=6, seed=1)).values()
        dense = torch.randn(6, 13)
        ep = torch.export.export(head, (dense, pooled))
        torch.testing.assert_close(ep.module()(dense, pooled), head(dense, pooled))


