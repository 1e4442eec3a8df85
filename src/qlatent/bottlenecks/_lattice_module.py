"""The module mechanics of a good lattice (:mod:`.good_lattice`): where its geometry's tables
live and how they travel.

:func:`index_table` makes the properties through which
:class:`~qlatent.bottlenecks.good_lattice.DitheredGoodLattice` reads its index tables
(:data:`INDEX_TABLES`, plain attributes rather than buffers); :func:`set_state` and
:func:`apply` are its ``__setstate__`` (pickles of older modules) and ``_apply`` (the tables
moved, never converted or emptied). The module is their first argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from .good_lattice import DitheredGoodLattice

#: the geometry's integer and bool tables (which coordinate is in which block, which blocks
#: have a closed-form density): plain tensor attributes rather than buffers, since what
#: treats every buffer as a number to average or update (``AveragedModel(use_buffers=True)``)
#: turned them into other indices without a word (an EMA step of 0.9·3 + 0.1·3 stored 2)
INDEX_TABLES = ("_block_of", "_exact", "_mc_blocks", "_mc_coords")


def index_table(name: str) -> property:
    """The index table ``name`` on the device of the module's buffers. ``nn.DataParallel``
    gives each replica its buffers on the replica's device and a shallow copy of the
    module's plain attributes, so a replica on a second GPU indexed its buffers with the
    first GPU's tables: the tables follow ``_unit`` there, moved once per replica."""

    def get(self: DitheredGoodLattice) -> Tensor:
        tables = self.__dict__["_index_tables"]
        device = self._unit.device
        if tables[name].device != device:
            tables = {key: table.to(device) for key, table in tables.items()}
            self.__dict__["_index_tables"] = tables  # this module's (a replica's) own
        return tables[name]

    def put(self: DitheredGoodLattice, table: Tensor) -> None:
        self.__dict__.setdefault("_index_tables", {})[name] = table

    return property(get, put, doc=f"index table {name} (see _INDEX_TABLES)")


def set_state(neck: DitheredGoodLattice, state: dict[str, Any]) -> None:
    """A whole module pickled before the index tables lived in ``_index_tables`` held them
    as plain attributes, or earlier as buffers: they move there; one pickled before
    ``density`` existed gets its default, the Monte-Carlo estimate it had."""
    from .good_lattice import DitheredGoodLattice

    super(DitheredGoodLattice, neck).__setstate__(state)
    neck.__dict__.setdefault("density", "monte_carlo")
    if "_index_tables" not in neck.__dict__:
        for name in neck._INDEX_TABLES:
            table = neck.__dict__.pop(name, None)
            if table is None:
                table = neck._buffers.pop(name)
                neck._non_persistent_buffers_set.discard(name)
            setattr(neck, name, table)


def apply(neck: DitheredGoodLattice, fn, recurse: bool = True):
    """Converts the parameters as any module does, but only moves the tables: they are not
    saved, so ``to_empty`` (the meta-device init pattern ``with torch.device("meta"): ...;
    to_empty(); load_state_dict()``) left them uninitialised for good (NaN errors, index
    errors), and ``half()`` rounded them (another lattice after ``.half().float()``, whose
    files a model loaded from the same weights could not decode). Tables stay off the meta
    device, as when built there, so they are never lost. The tables are the non-persistent
    buffers and the index tables (:attr:`_INDEX_TABLES`): constants of the geometry, kept in
    the dtypes they were built in, the index tables on the float tables' device."""
    from .good_lattice import DitheredGoodLattice

    tables = {name: neck._buffers.get(name) for name in neck._non_persistent_buffers_set}
    super(DitheredGoodLattice, neck)._apply(fn, recurse)
    for name, table in tables.items():
        moved = neck._buffers.get(name)
        if table is not None and moved is not None:
            device = table.device if moved.is_meta else moved.device
            neck._buffers[name] = table.to(device)
    device = neck._unit.device
    for name in neck._INDEX_TABLES:
        setattr(neck, name, getattr(neck, name).to(device))
    return neck
