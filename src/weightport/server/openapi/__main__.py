"""Print the OpenAPI document (``python -m weightport.server.openapi > docs/openapi.json``)."""

import sys

from weightport.server.openapi import document_text

sys.stdout.write(document_text())
