"""The compute catalogue: aliases, raw sizes, retired sizes and their substitutes."""
import json

import pytest

from orchestrator.backends.azure.catalogue import (ALIASES, SIZES, SUBSTITUTES, catalogue, cluster_name_for,
                                                  resolve)
from orchestrator.errors import UsageError


@pytest.mark.parametrize("alias,size,gpus", [
    ("gpu-t4", "Standard_NC4as_T4_v3", 1),
    ("gpu-a100", "Standard_NC24ads_A100_v4", 1),
    ("gpu-a100x4", "Standard_NC96ads_A100_v4", 4),
    ("gpu-h100x2", "Standard_NC80adis_H100_v5", 2),
    ("cpu", "Standard_DS3_v2", 0),
])
def test_current_alias_resolves_to_its_size_without_notice(alias, size, gpus):
    r = resolve(alias)
    assert (r.cluster, r.size.name, r.size.gpus, r.notice) == (alias, size, gpus, "")


# Microsoft's N-series migration guide, written out here (not read from the table under test):
# NC (K80) -> NC T4 v3, NCv2 (P100) and NCv3 (V100) -> NC A100 v4
MIGRATION_GUIDE = {
    "Standard_NC6": {"Standard_NC4as_T4_v3", "Standard_NC8as_T4_v3"},
    "Standard_NC12": {"Standard_NC16as_T4_v3"},
    "Standard_NC24": {"Standard_NC64as_T4_v3"},
    "Standard_NC24r": {"Standard_NC64as_T4_v3"},
    "Standard_NC6s_v2": {"Standard_NC24ads_A100_v4"},
    "Standard_NC12s_v2": {"Standard_NC48ads_A100_v4"},
    "Standard_NC24s_v2": {"Standard_NC96ads_A100_v4"},
    "Standard_NC6s_v3": {"Standard_NC24ads_A100_v4"},
    "Standard_NC12s_v3": {"Standard_NC48ads_A100_v4"},
    "Standard_NC24s_v3": {"Standard_NC96ads_A100_v4"},
}


@pytest.mark.parametrize("retired", sorted(MIGRATION_GUIDE))
def test_every_retired_size_moves_where_the_migration_guide_says(retired):
    r = resolve(retired)
    assert r.size.name in MIGRATION_GUIDE[retired] and not r.size.retired
    assert SIZES[retired.lower()].retired and SUBSTITUTES[retired] == r.size.name


@pytest.mark.parametrize("alias,retired,substitute,cluster,gpu_change", [
    ("gpu-nc12", "Standard_NC12 (2x K80)", "Standard_NC16as_T4_v3 (1x T4, 16 GiB GPU memory)", "nc16as-t4-v3",
     "GPUs per node: 2 -> 1"),
    ("gpu-nc24", "Standard_NC24 (4x K80)", "Standard_NC64as_T4_v3 (4x T4, 64 GiB GPU memory)", "gpu-t4x4", None),
])
def test_tutorial_aliases_print_one_line_naming_the_substitute_and_any_gpu_change(
        alias, retired, substitute, cluster, gpu_change):
    r = resolve(alias)
    assert "\n" not in r.notice and r.notice.startswith(f"notice: {retired} was retired on 2023-09-06")
    assert f"using {substitute} instead" in r.notice
    assert (gpu_change in r.notice) if gpu_change else ("GPUs per node" not in r.notice)
    # the substitute's cluster is the one its own name (or alias) gives: no duplicate clusters
    assert r.cluster == cluster == resolve(r.size.name).cluster


def test_raw_size_names_resolve_case_insensitively():
    assert resolve("Standard_NC24ads_A100_v4").cluster == "gpu-a100"
    r = resolve("standard_nc8as_t4_v3")
    assert r.size.name == "Standard_NC8as_T4_v3" and r.cluster == "nc8as-t4-v3"
    retired = resolve("Standard_NC6s_v3")
    assert retired.size.name == "Standard_NC24ads_A100_v4" and "2025-09-30" in retired.notice
    assert "GPUs per node" not in retired.notice  # 1 V100 -> 1 A100


def test_unknown_compute_is_a_user_error_listing_the_aliases():
    with pytest.raises(UsageError) as exc:
        resolve("gpu-k80")
    message = str(exc.value)
    assert "gpu-k80" in message and all(alias in message for alias in ALIASES)


def test_every_cluster_name_is_a_valid_azure_ml_compute_name():
    import re

    for size in SIZES.values():
        for name in (resolve(size.name).cluster, cluster_name_for(size.name)):
            assert re.fullmatch(r"[a-z][a-z0-9-]{1,15}", name), name
    assert all(len(a) <= 16 for a in ALIASES)


def test_every_retired_size_has_a_current_substitute_in_the_catalogue():
    retired = {s.name for s in SIZES.values() if s.retired}
    assert retired == set(SUBSTITUTES)
    assert all(not SIZES[name.lower()].retired for name in SUBSTITUTES.values())


def test_catalogue_lists_every_alias_and_size_once():
    rows = catalogue()
    assert [r["alias"] for r in rows[:len(ALIASES)]] == list(ALIASES)
    assert sorted(r["name"].lower() for r in rows) == sorted(
        {*SIZES} | {s.lower() for s in ALIASES.values()})
    nc12 = next(r for r in rows if r["alias"] == "gpu-nc12")
    assert nc12["status"] == "retired 2023-09-06" and nc12["substitute"] == "Standard_NC16as_T4_v3"
    json.dumps(rows)
