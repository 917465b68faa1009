"""The schema's migration scripts (Alembic): ``env.py``, ``versions/`` and the template for new
ones, shipped inside the package.  :mod:`s3balance.db.migrate` runs them; operators who prefer
Alembic's own command line use the repository's ``alembic/alembic.ini``, which points here.

Importing this package costs nothing: Alembic loads ``env.py`` and the scripts itself.
"""

#: The newest revision in ``versions/``: a daemon whose database is at this revision starts
#: without importing Alembic (about 8 MiB it would keep for its life).  Alembic itself decides
#: everything else (``ScriptDirectory``: see :func:`s3balance.db.migrate.head_revision`), and a
#: test fails when this is not its head: a new migration script changes this line too.
HEAD = "0009"
