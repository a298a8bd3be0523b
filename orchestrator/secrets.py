"""`redact`: the one place that decides what counts as a secret in a message.

Azure SDK errors quote request URLs (whose query may carry a SAS token), connection strings and
headers; both the storage code and the Azure ML seam pass their messages through here before
raising, so a rule added for one protects the other too.
"""
import re

# SAS tokens ride in URL query strings: cut every query whole (sv=...&sig=... has many fields).
_QUERY = re.compile(r"\?[^\s'\"]*")
# key=value secrets of connection strings and bare SAS tokens
_KEY_VALUE = re.compile(r"\b(AccountKey|SharedAccessSignature|SharedAccessKey|sig)=[^;&\s'\"]*", re.IGNORECASE)
_BEARER = re.compile(r"\b(Bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)

REDACTED = "<redacted>"


def redact(text):
    """`text` with URL queries, account keys, SAS signatures and bearer tokens replaced by
    <redacted>; the key names stay, so the message still says what was there."""
    text = _QUERY.sub("?" + REDACTED, text)
    text = _KEY_VALUE.sub(rf"\1={REDACTED}", text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)
