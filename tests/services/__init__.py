"""Real services started for the tests (dockerd, Azurite, moto), one module each."""
