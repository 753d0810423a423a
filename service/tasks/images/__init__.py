"""The image job: ``request`` parses the query, ``probe`` reads the header at submit,
``process`` runs on the cpu pool; ``errors`` holds what each step refuses and ``libtiff``
turns libtiff's messages into log records."""
