"""Operating a running daemon: the ``/api`` admin resource and live reconfiguration."""
