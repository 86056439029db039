"""The offline demo bundle (``python -m model.demo``): synthetic speech plus real sentences, no model hub."""
