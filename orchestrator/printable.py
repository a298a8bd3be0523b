"""Text from outside shown as text: control characters made visible, never acted on.

Labels are folder and file names that came with a dataset, model metadata or a run folder somebody
sent. A name holding an escape sequence must not recolour, retitle or rewrite the user's terminal,
nor reach a plot as a glyph no font has. Import-light (re only): the CLI's error line uses it.
"""
import re

# Characters a terminal acts on rather than shows: C0 controls but tab and newline, DEL, C1
# controls (ESC starts colour, cursor-moving and title-setting sequences; \x9b is a one-byte
# CSI), and the bidirectional overrides that reorder what a line seems to say.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text):
    """`text` with every control character shown as its escape (ESC as `\\x1b`)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
