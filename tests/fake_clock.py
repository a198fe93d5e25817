"""A wall clock in milliseconds that only moves when a test advances it."""


class FakeClock:
    def __init__(self, now_ms=1_700_000_000_000):
        self.now_ms = now_ms

    def __call__(self):
        return self.now_ms

    def advance(self, ms):
        self.now_ms += ms
