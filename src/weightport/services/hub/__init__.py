"""The Hugging Face Hub view of the catalog: repositories, revisions, files — no HTTP.

A model ``accounts/A/models/M`` is the repository ``A/M``; a fine-tune is a repository
under its account too, by its ``ft-…`` id or by the name part of its output name
(:mod:`~weightport.services.hub.repos`). Each repository has branches — ``main``, and for
fine-tunes ``step-N``, ``adapter`` and ``adapter-step-N`` — whose commits are 40-hex
digests of their content (:mod:`~weightport.services.hub.revisions`). A revision's files,
including merged LoRA shards computed on the fly, come from
:mod:`~weightport.services.hub.files`; folder listings from
:mod:`~weightport.services.hub.tree`.

The HTTP edge (``weightport.server.hub``) renders these; the console and the CLI can use
them without loading the server.
"""
