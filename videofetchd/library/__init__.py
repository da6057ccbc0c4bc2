"""The library: recognise files that already exist and mark their rows done, offline.

``walker`` walks directories and recognises IDs, ``walkproc`` runs it in a child process,
``scan`` records what it finds through ``queries`` (the SQL), ``report`` is the result, and
``commands`` holds the ``videofetchctl scan`` and archive commands. The walk never imports the
database layer. Imports the queue, never the workers or the control socket. Importing this
package loads nothing.
"""
