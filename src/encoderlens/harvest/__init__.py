"""Harvest activations of a whole dataset to sharded safetensors files, in bounded memory.

:func:`harvest` streams items through the model in batches, keeps the requested hook points'
activations (padding positions dropped, or kept and flagged), converts them to the storage dtype on
the CPU and writes them in shards of bounded size, with a manifest that says which item and position
every stored row is. It is resumable (a restart skips every item already written, and never writes
one twice) and runs unchanged under ``torchrun`` (each rank takes items ``i % world_size == rank``;
rank 0 merges one manifest at the end).

Layout of ``out_dir``::

    manifest.json                  merged view (rank 0 writes it; "complete": true at the end)
    rank000-00000.safetensors      shards: rank 0's first shard, ...
    _progress/rank000.json         each rank's committed shards (what a restart reads)

What is not in a progress file does not exist: a shard is written under a temporary name and
renamed into place (``os.replace``, atomic), then the rank's progress file is replaced the same
way. A kill at any moment leaves either the old or the new state, never a partial shard; files not
listed (from a kill between the two renames) are deleted on restart.

Nothing here depends on the model family: a batch of items becomes one input through the model
contract (``model.prepare_input``, see :class:`ItemFields`), runs with ``model.run_prepared``, and each
activation's rows follow the positions of its residual stream (the prepared batch's masks; see
:mod:`encoderlens.harvest.alignment`).

Modules: ``writer`` (:func:`harvest`), ``items`` (dataset items -> a prepared batch), ``alignment``
(which positions an activation follows), ``manifest`` (progress files and the merged manifest),
``reader`` (:func:`load_harvest`), ``command`` (the command line, also ``encoderlens harvest``).

Example:
    >>> from encoderlens.harvest import harvest, load_harvest
    >>> harvest(model, ["a first text", "another one"], ["blocks.3.hook_resid_post"], "acts/", batch_size=32)
    >>> h = load_harvest("acts/")
    >>> acts = h.load("blocks.3.hook_resid_post")     # (rows, d_model), rows = real tokens
    >>> rows = h.rows("token")                         # {"item": ..., "pos": ...} per row
"""

from encoderlens.harvest.command import main
from encoderlens.harvest.items import ItemFields
from encoderlens.harvest.manifest import FORMAT, FORMAT_VERSION
from encoderlens.harvest.reader import Harvest, load_harvest
from encoderlens.harvest.writer import harvest, storage_dtype

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Harvest",
    "ItemFields",
    "harvest",
    "load_harvest",
    "main",
    "storage_dtype",
]
