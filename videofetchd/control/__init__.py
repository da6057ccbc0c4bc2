"""The control surface: the Unix control socket, its wire format, status rendering, sd_notify.

``protocol`` (wire format) and ``display`` (text rendering) are standard-library only, so
``videofetchctl`` starts fast; ``server`` serves the socket from the daemon's loop; ``systemd``
talks to the service manager. The top of the import graph besides the entry points.
Importing this package loads nothing.
"""
