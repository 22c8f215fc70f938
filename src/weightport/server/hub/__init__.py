"""The Hugging Face Hub read protocol, mounted under ``/hf`` (``HF_ENDPOINT=<base>/hf``).

What ``huggingface_hub`` — and through it transformers, ``hf download``, vLLM and peft —
needs to load a repository: repo info, tree listings, paths-info, refs, and ``HEAD``/``GET``
of ``/{repo}/resolve/{rev}/{path}``. The prefix keeps the Hub's catch-all
``/{namespace}/{name}/…`` paths clear of every other route. Routes are in one table
(:mod:`~weightport.server.hub.routes`); what is not HTTP is in ``weightport.services.hub``.
"""

#: Where the Hub routes live; clients set ``HF_ENDPOINT`` to the server's base URL plus this.
PREFIX = "/hf"
