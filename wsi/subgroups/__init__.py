"""Patient subgroups: discovered without outcomes, frozen, then tested against outcomes.

::

    from wsi.subgroups import discover_subgroups, assign_subgroups, slide_embeddings
    table = slide_embeddings("out/features/efficientnet_lite0")   # slides × D, mean-pooled
    found = discover_subgroups(table, k=range(2, 9))             # k by stability only
    found.model.save("subgroups/")                                # model.json + model.npz
    assign_subgroups(found.model, validation_table)               # frozen: never re-clustered

Folders and files end to end (the ``wsi subgroups`` command):
:func:`wsi.pipeline.subgroups.discover_subgroups_run` and ``assign_subgroups_run``.
"""

from __future__ import annotations

import pandas as pd

from wsi.subgroups.association import (
    add_q_values,
    associate,
    interaction_test,
    label_tests,
    patient_table,
    survival_tests,
)
from wsi.subgroups.describe import effect_sizes, group_profiles
from wsi.subgroups.discovery import Discovery, discover_subgroups, parse_k
from wsi.subgroups.inputs import (
    INPUT_KINDS,
    fit_tile_clusters,
    read_tme_table,
    slide_embeddings,
    tile_cluster_compositions,
)
from wsi.subgroups.model import METHODS, SubgroupModel, load_subgroup_model


def assign_subgroups(model: SubgroupModel, table: pd.DataFrame) -> pd.DataFrame:
    """Put the slides of ``table`` (indexed by slide_id, the model's columns) into the
    model's frozen groups: ``slide_id, group, distance``. Nothing is re-fitted."""
    return model.assign(table)


__all__ = [
    "INPUT_KINDS",
    "METHODS",
    "Discovery",
    "SubgroupModel",
    "add_q_values",
    "assign_subgroups",
    "associate",
    "discover_subgroups",
    "effect_sizes",
    "fit_tile_clusters",
    "group_profiles",
    "interaction_test",
    "label_tests",
    "load_subgroup_model",
    "parse_k",
    "patient_table",
    "read_tme_table",
    "slide_embeddings",
    "survival_tests",
    "tile_cluster_compositions",
]
