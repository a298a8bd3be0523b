"""The compute catalogue: aliases, raw sizes, retired sizes and their substitutes."""
import json

import pytest

from orchestrator.compute import ALIASES, SIZES, SUBSTITUTES, catalogue, cluster_name_for, resolve
from orchestrator.errors import UserError


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


@pytest.mark.parametrize("alias,retired,substitute,gpus", [
    ("gpu-nc12", "Standard_NC12", "Standard_NC48ads_A100_v4", 2),
    ("gpu-nc24", "Standard_NC24", "Standard_NC96ads_A100_v4", 4),
])
def test_tutorial_aliases_resolve_to_a_current_size_with_the_same_gpu_count(alias, retired, substitute, gpus):
    r = resolve(alias)
    assert r.size.name == substitute and r.size.gpus == gpus and not r.size.retired
    # one line naming the retired size and its substitute
    assert "\n" not in r.notice and retired in r.notice and substitute in r.notice
    assert "2023-09-06" in r.notice
    # the substitute's cluster is shared with its own alias: no duplicate clusters
    assert r.cluster == ("gpu-a100x2" if gpus == 2 else "gpu-a100x4")


def test_raw_size_names_resolve_case_insensitively():
    assert resolve("Standard_NC24ads_A100_v4").cluster == "gpu-a100"
    r = resolve("standard_nc8as_t4_v3")
    assert r.size.name == "Standard_NC8as_T4_v3" and r.cluster == "nc8as-t4-v3"
    retired = resolve("Standard_NC6s_v3")
    assert retired.size.name == "Standard_NC24ads_A100_v4" and "2025-09-30" in retired.notice


def test_unknown_compute_is_a_user_error_listing_the_aliases():
    with pytest.raises(UserError) as exc:
        resolve("gpu-k80")
    message = str(exc.value)
    assert "gpu-k80" in message and all(alias in message for alias in ALIASES)


def test_every_cluster_name_is_a_valid_azure_ml_compute_name():
    import re

    for size in SIZES.values():
        for name in (resolve(size.name).cluster, cluster_name_for(size.name)):
            assert re.fullmatch(r"[a-z][a-z0-9-]{1,15}", name), name
    assert all(len(a) <= 16 for a in ALIASES)


def test_substitutes_are_current_and_keep_the_gpu_count():
    for gpus, name in SUBSTITUTES.items():
        assert SIZES[name.lower()].gpus == gpus and not SIZES[name.lower()].retired
    assert {s.gpus for s in SIZES.values() if s.retired} <= set(SUBSTITUTES)


def test_catalogue_lists_every_alias_and_size_once():
    rows = catalogue()
    assert [r["alias"] for r in rows[:len(ALIASES)]] == list(ALIASES)
    assert sorted(r["name"].lower() for r in rows) == sorted(
        {*SIZES} | {s.lower() for s in ALIASES.values()})
    nc12 = next(r for r in rows if r["alias"] == "gpu-nc12")
    assert nc12["status"] == "retired 2023-09-06" and nc12["substitute"] == "Standard_NC48ads_A100_v4"
    json.dumps(rows)
