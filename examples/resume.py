"""Stop a run after its first checkpoint, then resume it from there, from Python.

    python examples/resume.py DATA

A killed, canceled or failed local or docker run continues in its own folder, from its last
checkpoint, with the data and settings it was started with.
"""
import sys

import orchestrator


def main(data):
    run = orchestrator.train(data, backend="local", weights="none", mode="head", image_size=32, epochs=4,
                             batch_size=64, name="resume-example")
    for event in run.events():  # the job's progress events, as they come
        if event["type"] == "checkpoint":
            print(f"checkpoint after epoch {event['epoch']}: stopping {run.id}")
            break
    run.cancel()
    print(f"{run.id}: {run.status}")

    run.resume().wait()
    epochs = [row["epoch"] for row in run.history]
    print(f"{run.id}: {run.status} after {run.attempts} attempts; epochs {epochs}")
    assert run.status == "completed" and run.attempts == 2 and epochs == sorted(set(epochs)), (run, epochs)


if __name__ == "__main__":
    main(sys.argv[1])
