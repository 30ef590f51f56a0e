"""The compression methods, one registered method per public file (`embtables.registry` imports every module
here whose name does not start with `_` on first use, so adding a method is adding one file).

    full.py          `full`: the uncompressed table, the reference
    hash.py          `hash`: the hashing trick
    multihash.py     `multihash`: k seeded hashes into a shared pool (sum, mean/Bloom, concat) and variants
    qr.py            `qr`: compositional embeddings from complementary partitions (quotient-remainder)
    mixed_dim.py     `mixed_dim`: mixed-dimension embeddings (power rule, frequency blocks, projections)
    unified.py       `unified`: feature multiplexing / Unified Embedding
    optembed.py      `optembed`: OptEmbed's exported tables (kept rows at searched dims behind an id map)
    optembed_supernet.py  `optembed_supernet` (unlisted): OptEmbed's first training stage, which `carry_over`s
                     into `optembed` (the stages run in `embtables.app.stages`)
    _importance.py   helper: multihash's importance weights as a physical table (layout, remap, combine)
    _layout.py       helper: wide partitions stored as several physical tables of one width (qr, mixed_dim)
    _partitions.py   helper: mixed-radix complementary partitions (qr)
    _optembed_mask.py  helper: OptEmbed's learned row mask (thresholds, long-tailed step) and dim prefixes
    _optembed_search.py  helper: OptEmbed's evolutionary search of per-field dims under a byte budget
    _power_rule.py   helper: the mixed-dimension power rule and its budget fit (mixed_dim)
    _unified_chunks.py  helper: chunk width and chunks per feature from probes / width / chunks (unified)

May import: the core library (`embtables.config`, `bags`, `method`, `plan`, `program`, `registry`, `options`,
`hashing`, `frequency`, `kernels`, ...) and each other; never `embtables.stores` (a method describes tables and
their combine, a store holds them), nor `embtables.app`, `embtables.cli`, `embtables.models`, `embtables.datasets`.
"""
