"""Search for the best configuration within a time budget, then use the best model, from Python.

    python examples/search.py DATA

The search tries several configurations, cheapest first, each a run of its own (a trial); the
search's model is its best trial's.
"""
import sys

import orchestrator


def main(data):
    search = orchestrator.train(data, backend="local", search=True, trials=3, weights="none", image_size=32,
                                epochs=2, batch_size=64, time_budget=300, name="search-example")
    search.wait(on_event=lambda event: event["type"] == "trial_end" and print(
        f"trial {event.get('trial')}: {event.get('status')}, val accuracy {event.get('best_val_accuracy')}"))
    found = search.search()
    best = found["best"]
    print(f"best of {len(found['trials'])} trials: {best['run_id']} ({found['primary_metric']} {best.get(found['primary_metric'])})")
    compared = orchestrator.runs.compare([search.id])
    print(f"compared {len(compared['runs'])} trials side by side")
    print(f"the search's model: {search.model().path}")


if __name__ == "__main__":
    main(sys.argv[1])
