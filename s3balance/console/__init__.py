"""The web console at ``/web``: a static page shell and its assets (see :mod:`.resource`)."""
