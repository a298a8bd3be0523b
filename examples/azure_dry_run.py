"""What an Azure ML run would create and cost, and its job as YAML, without an Azure account.

    python examples/azure_dry_run.py DATA job.yml

A dry run makes no cloud call and needs no credentials: it checks the options and the dataset,
then describes the compute, the upload and the job, and writes the job for `az ml job create -f`.
"""
import sys

import orchestrator


def main(data, export):
    plan = orchestrator.train(data, compute="gpu-nc12", epochs=10, dry_run=True, export=export)
    print(plan.description)
    print(f"wrote {plan.export} ({len(plan.yaml.splitlines())} lines of YAML)")
    try:
        orchestrator.train(data, compute="gpu-nc12", nodes=0, dry_run=True)
    except orchestrator.UsageError as exc:
        print(f"as expected: {exc}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
