"""The queue: the ``videos`` table, every statement that changes it, and the rules of a job.

``jobs`` is pure policy (IDs, error classes, back-off); ``models`` declares the schema; ``store``
owns every query; ``dblink`` runs them on one thread for the event loop; ``listen`` wakes an idle
daemon on PostgreSQL. Imports only ``config`` and ``errors`` from outside; never the workers,
the library scanner or the control socket. Importing this package loads nothing.
"""
