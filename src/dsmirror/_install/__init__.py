"""Install: the places people use (HF cache, Ollama store, plain folders); list, read back, remove.

``hf``           a snapshot into the Hugging Face cache (``--format hf``)
``ollama``       a model into the Ollama store, manifest last (``--format ollama``; its layout for ``dir``)
``records``      what vouches for installed files; the records of plain-folder installs (``--format dir``)
``listing``      ``dsmirror ls``: every installed model and its status
``store_model``  an installed model read back as files, for ``dsmirror seed``
``removal``      ``dsmirror rm``
``links``        writing into a user's folders without following a symlink

The layouts are the formats' (``dsmirror._formats``: ``hfcache``, ``ollama``, ``installs``,
``private``); this package only writes and reads them.
"""
