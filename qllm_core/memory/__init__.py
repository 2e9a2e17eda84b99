"""Memory: what a read leaves, and how the question finds its blocks in it.

``blocks`` holds the evicted tokens as blocks with representative keys (host RAM or a disk
tier, a device cache of recent blocks); ``window`` the recent tokens; ``request`` one
request's memory over all layers; ``retrieval`` scores blocks for the current tokens and
the question; ``state`` is the one interface over a read's state (this memory, or
transformers' KV cache in mode ``full``); ``document`` a document read once, ``persistence``
its files, ``cache`` the recent documents; ``capacity`` checks that a read fits.
"""
