"""What the server and the CLI both need that is not HTTP.

Choosing the artifact a Together download names and planning its archive
(:mod:`~weightport.services.finetune_archives`), building and tracking compressed archives
(:mod:`~weightport.services.archive_builds`), and the Together JSON of a fine-tune
(:mod:`~weightport.services.together_resources`). This package sits below ``server/``: it
never imports it, so ``weightport`` commands use it without loading the HTTP edge.
"""
