"""Hooks for scripts/schemathesis.sh: how to send an NDJSON body.

The document describes a batch request (`application/x-ndjson`) as an
array of events, each sent as one line of JSON; schemathesis has no
serializer for that media type, so this one writes the lines. A value
that is not an array (a negative test) is written as one line, as it is.
"""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, list):
        return "".join(json.dumps(event) + "\n" for event in value).encode("utf-8")
    return (json.dumps(value) + "\n").encode("utf-8")
