"""train.py's reporter interface (log, event, warn, throttle), printing nothing: each benchmark
that calls the job's functions directly prints its own table instead."""


class QuietReport:
    def log(self, text):
        pass

    def event(self, type_, **fields):
        pass

    def warn(self, message):
        pass

    def throttle(self, phase, total, last=True, **fields):
        return self

    def update(self, done, **fields):
        pass
