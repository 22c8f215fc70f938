"""The web console: server-rendered pages at ``/console/`` (``/`` leads there).

::

    /console/sign-in            GET form, POST an API key → session cookie
    /console/sign-out           POST: ends the session
    /console/models             paged list: ?q= &kind= &state= &sort= &page=
    /console/models/{id}        files, state, ready-to-paste download commands
    /console/models/{id}/files/{path}      → 302 to a fresh signed URL
    /console/fine-tunes         list
    /console/fine-tunes/{id}    checkpoints by step, downloads with sizes, commands
    /console/fine-tunes/{id}/archives      GET build progress (JSON), POST queue a build
    /console/fine-tunes/{id}/download      ?checkpoint=&step=: the archive itself
    /console/keys               admin account: create, list, revoke API keys
    /console/static/{name}      the stylesheet, the script, the icon

Modules: :mod:`.app` (sub-application and middleware), :mod:`.session` (cookie and
identity), :mod:`.csrf`, :mod:`.render` (templates), :mod:`.assets`, :mod:`.commands`,
:mod:`.checkpoints`, and one module of routes per page family.
"""

from weightport.server.console.app import add_routes

__all__ = ["add_routes"]
