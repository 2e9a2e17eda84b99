"""Answering a request: read, re-read, decode.

``request`` builds one request (text, a document memory, or token ids); ``pipeline`` runs
its stages; ``reread`` chooses the passages the question attended to and reads them again
with full attention; ``decoding`` and ``sampling`` choose the answer's tokens; ``evidence``
turns the ranking into the passages an answer shows.
"""
