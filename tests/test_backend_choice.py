"""Choosing a backend, planning a job and approving costs are the backends' own capabilities.

A backend registered in backends.BACKENDS (here a lab's bench, a LocalBackend with an option and a
dry run of its own) is taken by "auto", forced by its own option, refused beside another backend
and planned by orchestrator.train, with no line of orchestrator/training.py naming it. The
quantize setting is the client's, a field of the spec, and old spec.json files keep it.
"""
import os

import pytest
from imagegen import make_dataset

import orchestrator
from orchestrator.backends import BACKENDS, get_backend
from orchestrator.backends.base import BackendOption, JobSpec
from orchestrator.backends.local import LocalBackend
from orchestrator.errors import UsageError
from orchestrator.events import ignore
from orchestrator.plan import Plan
from orchestrator.training import choose_backend


class LabBackend(LocalBackend):
    """The lab's bench: "auto" takes it where LAB_BENCH names a bench, --bench forces it."""
    name = "lab"
    title = "lab bench"
    options = (BackendOption("--bench", "str", None, "the bench to run on"),)

    @classmethod
    def auto_choice(cls, options, named=False):
        bench = options.get("bench") or os.environ.get("LAB_BENCH")
        if bench:
            return f"bench {bench}"
        if named:
            raise UsageError("lab: no bench; --bench or LAB_BENCH")
        return None

    @classmethod
    def plan(cls, spec, export=None, on_event=ignore):
        bench = cls.auto_choice(spec.backend_options, named=True)
        return Plan(spec.run_id, f"{bench}: train.py {' '.join(spec.train_args)}", spec)


@pytest.fixture
def lab(monkeypatch, tmp_path):
    monkeypatch.setitem(BACKENDS, "lab", (__name__, "LabBackend"))
    monkeypatch.chdir(tmp_path)  # no Azure ML config.json found above it
    monkeypatch.delenv("LAB_BENCH", raising=False)
    return monkeypatch


def test_auto_asks_a_registered_backend_first_and_its_option_forces_it(lab):
    assert choose_backend("auto", {})[0] in ("docker", "local")  # no bench, no workspace: this machine
    lab.setenv("LAB_BENCH", "b1")
    assert choose_backend("auto", {}) == ("lab", "bench b1")
    lab.delenv("LAB_BENCH")
    assert choose_backend("auto", {"bench": "b2"}) == ("lab", "bench b2")
    with pytest.raises(UsageError, match=r"^lab: no bench"):
        choose_backend("lab", {})
    with pytest.raises(UsageError, match=r"^--bench: lab bench option\(s\), which --backend local has not; drop them "
                                         r"or use --backend lab$"):
        choose_backend("local", {"bench": "b2"})
    with pytest.raises(UsageError, match=r"^--nodes: Azure ML option\(s\); --bench: lab bench option\(s\): options of "
                                         r"different backends; keep one backend's$"):
        choose_backend("auto", {"bench": "b2", "nodes": 2})


def test_train_plans_on_the_backend_its_options_name(lab, tmp_path):
    data = make_dataset(tmp_path / "colors", per_class=4)
    plan = orchestrator.train(data, bench="b3", epochs=2, dry_run=True, runs_dir=tmp_path / "runs")
    assert plan.description == "bench b3: train.py --epochs 2" and plan.spec.backend_options == {"bench": "b3"}
    with pytest.raises(UsageError, match=r"^backend local has no dry run: --dry-run and --export describe a job "
                                         r"without starting it; use them with --backend lab or --backend azure$"):
        orchestrator.train(data, backend="local", dry_run=True)
    with pytest.raises(UsageError, match=r"^the options given mean backend docker, which has no dry run"):
        orchestrator.train(data, cpus=2, dry_run=True)
    assert not (tmp_path / "runs").exists()


def test_every_backend_takes_approve():
    def approve(question):
        return True
    for name in BACKENDS:
        backend = get_backend(name, on_event=print, approve=approve)
        assert backend.approve is approve and backend.on_event is print


def test_quantize_is_the_specs_own_and_old_spec_files_keep_it(tmp_path):
    spec = JobSpec(run_id="r-1", data=tmp_path, run_dir=tmp_path / "r-1", train_args=[], quantize="int8")
    assert JobSpec.from_json(spec.to_json()) == spec and spec.to_json()["quantize"] == "int8"
    old = {"run_id": "r-1", "data": str(tmp_path), "run_dir": str(tmp_path / "r-1"), "train_args": [],
           "backend_options": {"gpus": "none", "quantize": "int8"}}  # as runs started before recorded it
    assert (JobSpec.from_json(old).quantize, JobSpec.from_json(old).backend_options) == ("int8", {"gpus": "none"})
