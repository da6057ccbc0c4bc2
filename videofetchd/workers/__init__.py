"""The workers: the supervisor loop, its slots of warm children, and what runs inside a child.

``supervisor`` claims from the queue and dispatches to ``slots`` (parent side); ``child`` runs in
each slot's process and calls ``download``, the only module that imports yt-dlp; ``recorder``
writes outcomes back; ``preload`` (with ``warmup``) is what the forkserver loads once. Imports the queue, never the
control socket or the library scanner. Importing this package loads nothing.
"""
